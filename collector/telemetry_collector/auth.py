"""Authentication of readers, for any route: `requires(scope)` on a Starlette endpoint.

Every read route declares the scope it needs, JSON and HTML alike::

    @requires(Scope.READ)
    async def records(request: Request) -> Response: ...

A page route does the same and passes how its refusals look, so a browser gets a page and
the login prompt (the 401 carries ``WWW-Authenticate: Basic``; the user types any name and
the token as the password)::

    def page_error(status: int, message: str, headers: dict[str, str]) -> Response:
        return templates.TemplateResponse(request, "error.html", {"message": message},
                                          status_code=status, headers=headers)

    @requires(Scope.READ, error=page_error)
    async def builds(request: Request) -> Response:
        who = request.state.principal  # the `Principal` that was let in
        ...

    collector_app.add_routes([Route("/builds", builds)])

The endpoint runs only for a request carrying a credential with that scope (admin includes
read): ``Authorization: Bearer <token>`` (or Basic with the token as password), or, when
TLS client certificates are on and no Authorization header is sent, a client certificate
whose Common Name is registered as a reader (`telemetry-collector token add NAME
--certificate`).  Otherwise: 401 without a usable credential (an unknown or revoked token
included), 403 with one whose scope is too small, 404 when reads are turned off.  The
credential is looked up in the database on every request, so a revocation takes effect on
the next one.  Each refusal is counted and logged by the application (`Authenticator.refused`).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import identity
from .credentials import Principal, Scope, secret_from_authorization, secret_hash
from .store import Store, StoreError

T = TypeVar("T")


class StoreRunner(Protocol):
    """Runs a function with a database connection, off the event loop."""

    def __call__(self, fn: Callable[[Store], T], /) -> Awaitable[T]: ...


Endpoint = Callable[[Request], Awaitable[Response]]
ErrorRenderer = Callable[[int, str, dict[str, str]], Response]

REALM = "telemetry-collector"
CHALLENGES = f'Bearer realm="{REALM}", Basic realm="{REALM}"'
FIRST_TOKEN_HINT = "create one with: telemetry-collector token add NAME --scope read --database URL"


class AuthRefusal(enum.Enum):
    """The value names the counter (``refused.<value>``)."""

    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    READS_OFF = "reads_off"
    UNAVAILABLE = "credentials_unavailable"


@dataclass(frozen=True)
class Denied:
    refusal: AuthRefusal
    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


def json_error(status: int, message: str, headers: dict[str, str]) -> Response:
    return JSONResponse({"message": message}, status_code=status, headers=headers)


class Authenticator:
    """Decides who a request is.  `run` runs a function with a database connection off the
    event loop; `refused` is told of every refusal (to count and log it)."""

    def __init__(self, run: StoreRunner, *, reads: bool = True,
                 refused: Callable[[Request, Denied], None] = lambda request, denied: None):
        self.run = run
        self.reads = reads
        self.refused = refused

    async def check(self, request: Request, needed: Scope) -> Principal | Denied:
        if not self.reads:
            return Denied(AuthRefusal.READS_OFF, 404, "Reads are turned off on this collector (ingest only)")
        authorization = request.headers.get("authorization")
        certificate = identity.of_scope(request.scope)
        try:
            if authorization is not None:
                secret = secret_from_authorization(authorization)
                if secret is None:
                    return self._unauthenticated("The Authorization header holds no usable token "
                                                 "(send: Authorization: Bearer <token>)")
                digest = secret_hash(secret)
                credential = await self.run(lambda store: store.credential_for_secret(digest))
                if credential is None:
                    return self._unauthenticated("The token is not valid (unknown or revoked)")
            elif certificate is not None and certificate.common_name is not None:
                name = certificate.common_name
                credential = await self.run(lambda store: store.certificate_reader(name))
                if credential is None:
                    return self._unauthenticated(f"The client certificate ({certificate.subject}) is not a "
                                                 "reader; send a token, or register the certificate with: "
                                                 "telemetry-collector token add CN --certificate")
            else:
                return self._unauthenticated(f"A read credential is needed (Authorization: Bearer <token>); "
                                             f"{FIRST_TOKEN_HINT}")
        except StoreError:
            return Denied(AuthRefusal.UNAVAILABLE, 503, "Credentials could not be checked (database error); "
                          "try again later", (("Retry-After", "5"),))
        if not credential.scope.allows(needed):
            return Denied(AuthRefusal.FORBIDDEN, 403, f"This needs the {needed.value} scope; the credential "
                          f"{credential.name!r} has {credential.scope.value}")
        return Principal(name=credential.name, kind=credential.kind, scope=credential.scope)

    @staticmethod
    def _unauthenticated(message: str) -> Denied:
        return Denied(AuthRefusal.UNAUTHENTICATED, 401, message, (("WWW-Authenticate", CHALLENGES),))


def requires(needed: Scope, *, error: ErrorRenderer = json_error) -> Callable[[Endpoint], Endpoint]:
    """Let the endpoint run only for a credential with the `needed` scope; it finds the
    `Principal` in ``request.state.principal``.  The application's `Authenticator` is
    ``request.app.state.authenticator``."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            authenticator: Authenticator = request.app.state.authenticator
            outcome = await authenticator.check(request, needed)
            if isinstance(outcome, Denied):
                authenticator.refused(request, outcome)
                return error(outcome.status, outcome.message, dict(outcome.headers))
            request.state.principal = outcome
            return await endpoint(request)

        return guarded

    return decorate
