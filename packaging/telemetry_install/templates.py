"""@NAME@ placeholders in unit and etc/ templates: filling them, and what a template needs.

A template naming a placeholder that does not exist is an error, never left in the
output, so a typo cannot install a unit that watches the literal text "@SPOLDIR@".
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from telemetry.errors import TelemetryError

PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
_PROGRAM = re.compile(r"@BINDIR@/([A-Za-z0-9_.-]+)")


class TemplateError(TelemetryError):
    pass


def placeholders_in(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def fill(text: str, values: Mapping[str, str], source: str = "<template>") -> str:
    unknown = sorted(placeholders_in(text) - values.keys())
    if unknown:
        names = ", ".join(f"@{n}@" for n in unknown)
        raise TemplateError(f"{source}: unknown placeholder {names}; known: "
                            + ", ".join(f"@{n}@" for n in sorted(values)))
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def programs_named(text: str) -> set[str]:
    """The installed programs a template refers to (as @BINDIR@/name)."""
    return set(_PROGRAM.findall(text))
