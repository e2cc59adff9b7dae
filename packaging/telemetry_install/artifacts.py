"""The data files of the source tree and where each one is installed.

A file's folder says what it is (systemd/ units, systemd/tmpfiles.d, etc/sysctl.d, …), so
adding a unit is adding a template, nothing else.  A file is installed only when every
program it starts exists: its own `@BINDIR@/name` references, those of the service a
.socket, .path or .timer activates, and those of the units it Requires=, so no installed
unit points at one that is not.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .layout import Layout
from .templates import programs_named

TEMPLATE_SUFFIX = ".in"
UNIT_SUFFIXES = (".service", ".socket", ".path", ".timer")
_UNIT_OPTION = re.compile(r"^\s*Unit\s*=\s*(\S+)\s*$", re.MULTILINE)
_HARD_DEPENDENCY = re.compile(r"^\s*(?:Requires|BindsTo|Requisite)\s*=\s*(.*)$", re.MULTILINE)


class Kind(enum.Enum):
    UNIT = "systemd unit"
    TMPFILES = "tmpfiles.d"
    SYSUSERS = "sysusers.d"
    SYSCTL = "sysctl.d"
    MANAGER_DROPIN = "system.conf.d"


# Source folder → (kind, destination below the prefix's lib directory).
FOLDERS: tuple[tuple[str, Kind, str], ...] = (
    ("systemd", Kind.UNIT, "systemd/system"),
    ("systemd/tmpfiles.d", Kind.TMPFILES, "tmpfiles.d"),
    ("systemd/sysusers.d", Kind.SYSUSERS, "sysusers.d"),
    ("etc/sysctl.d", Kind.SYSCTL, "sysctl.d"),
    ("etc/systemd/system.conf.d", Kind.MANAGER_DROPIN, "systemd/system.conf.d"),
)


@dataclass(frozen=True)
class Artifact:
    source: Path
    kind: Kind
    name: str  # installed file name
    libsubdir: str

    def destination(self, layout: Layout) -> str:
        if self.kind is Kind.UNIT:
            return os.path.join(layout.unitdir, self.name)
        return os.path.join(layout.libdir, self.libsubdir, self.name)

    @property
    def is_unit(self) -> bool:
        return self.kind is Kind.UNIT


def installed_name(filename: str) -> str:
    return filename[: -len(TEMPLATE_SUFFIX)] if filename.endswith(TEMPLATE_SUFFIX) else filename


def discover(tree: Path) -> list[Artifact]:
    found = []
    for folder, kind, sub in FOLDERS:
        base = tree / folder
        if not base.is_dir():
            continue
        for path in sorted(base.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            name = installed_name(path.name)
            if kind is Kind.UNIT and not name.endswith(UNIT_SUFFIXES):
                continue
            found.append(Artifact(path, kind, name, sub))
    return found


def activated_unit(name: str, text: str) -> str | None:
    """The service a .socket, .path or .timer starts (Unit=, else the same name)."""
    if not name.endswith(UNIT_SUFFIXES) or name.endswith(".service"):
        return None
    m = _UNIT_OPTION.search(text)
    return m.group(1) if m else name.rsplit(".", 1)[0] + ".service"


def required_units(text: str) -> set[str]:
    """Units that must load for this one to start (Requires=, BindsTo=, Requisite=)."""
    return {u for line in _HARD_DEPENDENCY.findall(text) for u in line.split()}


def required_programs(name: str, text: str, unit_texts: dict[str, str],
                      _seen: frozenset[str] = frozenset()) -> set[str]:
    """Programs a file needs: its own, and those of the units it activates or requires
    (`unit_texts` maps our unit names to their template text)."""
    needed = programs_named(text)
    if not name.endswith(UNIT_SUFFIXES):
        return needed
    related = required_units(text)
    companion = activated_unit(name, text)
    if companion is not None:
        related.add(companion)
    seen = _seen | {name}
    for other in sorted(related - seen):
        if other in unit_texts:
            needed |= required_programs(other, unit_texts[other], unit_texts, seen)
    return needed


def select(
    artifacts: Iterable[Artifact], programs: set[str]
) -> tuple[list[Artifact], list[tuple[Artifact, set[str]]]]:
    """(installable, [(skipped, missing programs)]) given the programs that exist."""
    artifacts = list(artifacts)
    texts = {a.source: a.source.read_text(encoding="utf-8") for a in artifacts}
    unit_texts = {a.name: texts[a.source] for a in artifacts if a.is_unit}
    chosen, skipped = [], []
    for a in artifacts:
        text = texts[a.source]
        missing = required_programs(a.name if a.is_unit else a.source.name, text, unit_texts) - programs
        if missing:
            skipped.append((a, missing))
        else:
            chosen.append(a)
    return chosen, skipped
