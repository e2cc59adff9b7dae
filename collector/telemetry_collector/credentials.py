"""Read credentials, as values (pure): scopes, token secrets and their hashes, the
Authorization header, and the names of credentials.

A bearer token is 32 random bytes (``tct_`` and 43 URL-safe base64 characters).  Only its
SHA-256 is stored: a secret that random cannot be guessed from its hash, so a slow password
hash would add nothing, and a stolen database does not give anyone a way in.  The lookup is
by hash, so comparing secrets never runs in the request's time.

A certificate reader is a credential without a secret: a client certificate whose
subject Common Name equals its name (see `identity`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import secrets
from dataclasses import dataclass

from telemetry.errors import TelemetryError

TOKEN_PREFIX = "tct_"
TOKEN_BYTES = 32
NAME_MAX = 128
AUTH_BEARER = "bearer"
AUTH_BASIC = "basic"


class CredentialError(TelemetryError):
    pass


class Scope(enum.Enum):
    """What a credential may do; admin includes read."""

    READ = "read"
    ADMIN = "admin"

    def allows(self, needed: Scope) -> bool:
        return self is Scope.ADMIN or needed is Scope.READ


class Kind(enum.Enum):
    TOKEN = "token"  # a bearer secret
    CERTIFICATE = "certificate"  # a client certificate's Common Name


@dataclass(frozen=True)
class Credential:
    name: str
    kind: Kind
    scope: Scope
    created: int  # unix seconds


@dataclass(frozen=True)
class Principal:
    """Who a request authenticated as."""

    name: str
    kind: Kind
    scope: Scope


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: str) -> str:
    """A credential's name: printable, no surrounding blanks, at most NAME_MAX characters
    (a certificate reader's name is a Common Name, which may hold spaces)."""
    if not name or len(name) > NAME_MAX or name != name.strip() or not name.isprintable():
        raise CredentialError(f"{name[:NAME_MAX]!r} is not a usable name: 1 to {NAME_MAX} printable "
                              "characters without surrounding spaces")
    return name


def secret_from_authorization(value: str | None) -> str | None:
    """The token an Authorization header carries: ``Bearer <token>``, or HTTP Basic with the
    token as the password (what a browser's login prompt sends; the user name is ignored).
    None when there is no usable credential in it."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if not rest:
        return None
    scheme = scheme.lower()
    if scheme == AUTH_BEARER:
        return rest
    if scheme == AUTH_BASIC:
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        _, colon, password = decoded.partition(":")
        return password if colon and password else None
    return None
