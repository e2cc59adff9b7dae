"""What happens to one crash before its core is read: the pure decision.

A `CrashEvent` gathers what the kernel (or systemd-coredump) said about the crash and what
/proc confirmed; `decide` turns it into an `Outcome`: a fixed report (the original's path
filters), a stub (an unsafe dump, whose memory must not be read), a skip (our own
services' crashes, which would loop), or a full analysis.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .payload import Category, Header, classify_path, decode_process_path


class Namespace(enum.Enum):
    HOST = "host"  # same mount namespace as crashprobe: the host's paths are the process's
    FOREIGN = "foreign"  # a container: its paths are not the host's
    UNKNOWN = "unknown"  # not verified: host files are used only when build ids match


@dataclass(frozen=True)
class CrashEvent:
    process_name: str | None = None  # %e / comm: for display only, never for decisions
    raw_path: str | None = None  # %E as the kernel gave it ('!' for '/')
    signal: int | None = None
    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    dump_mode: int | None = None
    namespace: Namespace = Namespace.UNKNOWN
    credentials_changed: bool = False
    exe: str | None = None  # /proc/PID/exe or COREDUMP_EXE, when known

    @property
    def executable(self) -> str:
        """The key for flood control and the Process line."""
        if self.raw_path:
            return decode_process_path(self.raw_path)
        return self.exe or self.process_name or "unknown"

    def header(self, pid: int | None = None, executable: str | None = None, signal: int | None = None) -> Header:
        """-E's path, else -p's name (as the original), else what the core says."""
        if self.raw_path:
            process = decode_process_path(self.raw_path)
        else:
            process = self.process_name or self.exe or executable or "unknown"
        return Header(process=process, pid=pid if pid is not None else self.pid,
                      signal=self.signal if self.signal is not None else signal)


class Action(enum.Enum):
    ANALYZE = "analyze"
    FIXED = "fixed"  # a category whose payload needs no core
    STUB = "stub"  # a report without memory
    SKIP = "skip"  # no report at all


@dataclass(frozen=True)
class Outcome:
    action: Action
    category: Category = Category.CLR
    reason: str = ""


def decide(event: CrashEvent, *, filters_off: bool, service_uid: int | None) -> Outcome:
    if service_uid is not None and event.uid == service_uid:
        return Outcome(Action.SKIP, reason="crash of a telemetry service (not reported, so a crash cannot feed itself)")
    category = classify_path(event.raw_path, filters_off)
    if category is Category.BUILD:
        return Outcome(Action.FIXED, category, "Ignoring core (from mock build)")
    if category is Category.THIRD_PARTY:
        return Outcome(Action.FIXED, category, "Ignoring core (third-party binary)")
    if event.namespace is Namespace.FOREIGN and not filters_off:
        return Outcome(Action.FIXED, Category.THIRD_PARTY, "Ignoring core (process in another mount namespace)")
    if event.dump_mode == 2 or event.credentials_changed:
        return Outcome(Action.STUB, Category.CLR, "the kernel marked this dump unsafe (setuid, or dump mode 2)")
    if event.dump_mode == 0:
        return Outcome(Action.SKIP, reason="the process was not dumpable")
    return Outcome(Action.ANALYZE, Category.CLR)
