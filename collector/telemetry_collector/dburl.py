"""``--database`` values: ``sqlite:///relative.db``, ``sqlite:////absolute.db``, a plain path,
or ``postgresql://…`` (also ``postgres://``, which the reference deployment wrote).

SQLite URLs follow the common convention (three slashes, then the path; a fourth slash
makes it absolute).  The default is ``records.db`` in the user's state directory
(the client's XDG rule, telemetry.paths), so a user runs a collector without choosing anything.
"""

from __future__ import annotations

import enum
import os
import urllib.parse
from dataclasses import dataclass

from telemetry.errors import TelemetryError
from telemetry.paths import user_state_dir

SQLITE_FILE = "records.db"


class DatabaseURLError(TelemetryError):
    pass


class Backend(enum.Enum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


@dataclass(frozen=True)
class DatabaseURL:
    backend: Backend
    target: str  # SQLite: a file path; PostgreSQL: a libpq connection URI

    def redacted(self) -> str:
        """For logs: the URL without its password."""
        if self.backend is Backend.SQLITE:
            return f"sqlite:///{self.target}"
        parts = urllib.parse.urlsplit(self.target)
        if parts.password is not None:
            credentials, host = parts.netloc.rsplit("@", 1)
            parts = parts._replace(netloc=f"{credentials.split(':', 1)[0]}:***@{host}")
        if parts.query:
            query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            hidden = [(k, "***" if k == "password" else v) for k, v in query]
            parts = parts._replace(query=urllib.parse.urlencode(hidden, safe="/"))
        return urllib.parse.urlunsplit(parts)


def default_sqlite_path() -> str:
    return os.path.join(user_state_dir(), "collector", SQLITE_FILE)


def parse_database_url(value: str | None) -> DatabaseURL:
    if value is None or value == "":
        return DatabaseURL(Backend.SQLITE, default_sqlite_path())
    scheme, sep, rest = value.partition("://")
    if not sep:
        if value.startswith(("sqlite:", "postgres:", "postgresql:")):
            raise DatabaseURLError(f"database URL {value!r}: expected '//' after the scheme")
        return DatabaseURL(Backend.SQLITE, os.path.abspath(value))
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise DatabaseURLError(
                f"database URL {value!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        path = rest[1:].split("?", 1)[0]
        if path == ":memory:":
            raise DatabaseURLError("an in-memory SQLite database would lose every record; name a file")
        return DatabaseURL(Backend.SQLITE, os.path.abspath(path))
    if scheme in ("postgresql", "postgres"):
        return DatabaseURL(Backend.POSTGRESQL, "postgresql://" + rest)
    raise DatabaseURLError(f"database URL {value!r}: the scheme must be sqlite or postgresql")
