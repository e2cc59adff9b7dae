"""telemetry-collector's entry point: a missing dependency is one line naming the package
to install (telemetry.entry), the client library included."""

from __future__ import annotations

import sys

NAME = "telemetry-collector"
PROGRAMS: dict[str, str] = {NAME: "telemetry_collector.main:main"}
LIBRARY = "telemetry"


def main() -> object:
    try:
        from telemetry.entry import run

        from .dependencies import KNOWN
    except ModuleNotFoundError as e:
        if (e.name or "").split(".", 1)[0] != LIBRARY:
            raise
        print(f"{NAME}: the Python module '{LIBRARY}' is missing: install the Debian package "
              "telemetrics-client (or: pip install telemetrics-client)", file=sys.stderr)
        sys.exit(1)
    return run(NAME, PROGRAMS[NAME], KNOWN)
