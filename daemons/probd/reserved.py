"""Classifications only the system's own probes may send.

A record's classification is what the collector and its views trust to say what it is:
`org.clearlinux/crash/*` is a crash crashprobe saw, `org.clearlinux/kernel/*` an oops
klogscanner read.  Any local user can connect to the socket, so without this any user
could send records that look like theirs.  `reserved_classifications` names prefixes,
`reserved_classification_uids` the users who may send them; the account telemprobd runs
as (the service account, or the user in user mode) and the `telemetry` account may too.

The sender checked is the process that connected (SO_PEERCRED), not the credentials it
states: crashprobe, run as root by the kernel, states the crashed user's uid so that the
record counts in that user's share, and remains root here.  Pure once built: a
Reservation answers for a classification and a uid.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from telemetry.config import ConfigError
from telemetry.paths import SERVICE_USER

PREFIXES_KEY = "reserved_classifications"
UIDS_KEY = "reserved_classification_uids"


@dataclass(frozen=True)
class Reservation:
    """Classifications only some senders may use, and who they are."""
    prefixes: tuple[str, ...]  # lower case, without a trailing "/"
    uids: frozenset[int]
    names: str = ""  # who may send them, for the refusal's text

    def refusal(self, classification: str, uid: int) -> str | None:
        """Why `uid` may not send `classification`, or None when it may."""
        if uid in self.uids or not self.prefixes:
            return None
        wanted = classification.lower()
        for prefix in self.prefixes:
            if wanted == prefix or wanted.startswith(prefix + "/"):
                return (f"classification {classification} is reserved for the system's probes "
                        f"({prefix}/*: {self.names}); uid {uid} may not send it")
        return None


NO_RESERVATION = Reservation((), frozenset())


def _prefixes(text: str, source: str | None) -> tuple[str, ...]:
    out = []
    for item in text.replace(",", " ").split():
        prefix = item.lower().removesuffix("/*").rstrip("/")
        if not prefix or "/" not in prefix or "*" in prefix:
            raise ConfigError(f"{item!r} is not a classification prefix (as org.clearlinux/crash)", source,
                              key=PREFIXES_KEY)
        out.append(prefix)
    return tuple(out)


def _uid(item: str, source: str | None) -> int:
    if item.isdigit():
        return int(item)
    try:
        return pwd.getpwnam(item).pw_uid
    except KeyError:
        raise ConfigError(f"no user {item!r} on this system", source, key=UIDS_KEY) from None


def _service_uid() -> int | None:
    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return None


def build(prefixes: str, uids: str, *, own_uid: int | None = None, source: str | None = None) -> Reservation:
    """The reservation the two keys describe; ConfigError names the key and the bad item."""
    allowed = {_uid(item, source) for item in uids.replace(",", " ").split()}
    allowed.add(os.getuid() if own_uid is None else own_uid)
    if (service := _service_uid()) is not None:
        allowed.add(service)
    names = ", ".join(_name(u) for u in sorted(allowed))
    return Reservation(_prefixes(prefixes, source), frozenset(allowed), names)


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def from_config(cfg) -> Reservation:
    return build(cfg.reserved_classifications, cfg.reserved_classification_uids, source=cfg.source)
