"""The collector's dependencies beyond the client library's, for one-line messages naming
the package to install when one is missing (telemetry.entry)."""

from __future__ import annotations

from telemetry.entry import DEPENDENCIES, Dependency, install_hint

KNOWN: dict[str, Dependency] = {
    **DEPENDENCIES,
    "uvicorn": Dependency("python3-uvicorn", "uvicorn"),
    "httptools": Dependency("python3-httptools", "httptools"),
    "psycopg": Dependency("python3-psycopg", "psycopg[binary]"),
    "jinja2": Dependency("python3-jinja2", "jinja2"),
    "markupsafe": Dependency("python3-markupsafe", "markupsafe"),
}


def hint(module: str) -> str:
    return install_hint(module, KNOWN)
