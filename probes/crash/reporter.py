"""One crash, from what is known about it to at most one record: the stages every mode of
crashprobe runs (decide, flood control, read and analyse under a time limit, lay out,
send), with the run's config and policies.

The core reader and the analysis (pyelftools, the unwinder, the symbolizer) are imported
only when a core is read: the kernel starts crashprobe for every crash, and most runs end
before that (not opted in, flood control, a fixed report, a stub).  `preload` imports
them early when privileges are about to be dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pwd
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from telemetry import log as log_mod
from telemetry.errors import TelemetryError
from telemetry.paths import SERVICE_USER, Mode
from telemetry.record import create_record

from ..common import EXIT_FAILURE, Probe, SendResult
from .files import FileAccess
from .flood import FloodPolicy, FloodStore, LockUnavailable
from .payload import Category, backtrace_payload, category_of, stub_payload
from .pipeline import Action, CrashEvent, Namespace, Outcome, decide

if TYPE_CHECKING:
    from .analyze import Analysis
    from .corefile import CoreDump, ReadLimits

PROGRAM = "crashprobe"
GRACE = 10  # seconds past the time limit before the watchdog ends the process


class TimeLimitReached(TelemetryError):
    pass


@dataclass(frozen=True)
class Report:
    category: Category
    payload: str
    analysis: Analysis | None = None


class Reporter:
    """One run: config, paths, policies, and the report pipeline."""

    def __init__(self, config_file: str | None, debug_dirs: tuple[str, ...], *, kernel: bool):
        self.probe = Probe(PROGRAM, config_file)
        self.log = self.probe.log
        if kernel:
            self.log = log_mod.setup(PROGRAM, self.probe.config.log_level, journal=True)
        cfg = self.probe.config
        self.time_limit = cfg.crash_time_limit
        self.flood = FloodPolicy(cfg.crash_flood_window, cfg.crash_daily_cap)
        self.debug_dirs = debug_dirs
        self.system = self.probe.paths.mode is Mode.SYSTEM
        self.filters_off = self.probe.privacy_filters_off
        self.service_uid = _service_uid() if self.system else None
        self.last_send: SendResult | None = None

    @property
    def last_send_retryable(self) -> bool:
        return self.last_send is not None and self.last_send.retryable

    @functools.cached_property
    def limits(self) -> ReadLimits:
        from .corefile import MiB, ReadLimits

        return ReadLimits(max_core_bytes=self.probe.config.crash_max_core_size * MiB)

    def read_core(self, fd: int) -> CoreDump:
        """The core on `fd` (a pipe or a file), read within this run's limits."""
        from .source import read_core

        return read_core(fd, self.limits)

    # --- stages ---------------------------------------------------------------------

    def outcome(self, event: CrashEvent) -> Outcome:
        return decide(event, filters_off=self.filters_off, service_uid=self.service_uid)

    def _private(self, path: str) -> str:
        """A directory of root's own state: created and checked in system mode."""
        from .places import private_dir

        return private_dir(path) if self.system else path

    def lock_dir(self) -> str:
        from .places import PlaceUnsafe, run_dir

        try:
            return self._private(run_dir(self.probe.paths))
        except PlaceUnsafe as e:
            raise LockUnavailable(str(e)) from None

    def flood_allows(self, event: CrashEvent) -> bool:
        """Whether flood control lets this crash be reported.  A state that cannot be read or
        written (planted link, full disk, a lock held too long) does not silence the crash:
        whoever can write the state directory must not be able to suppress reports, and what
        a storm can then cost stays bounded by the analysis lock and telemprobd's rate limits."""
        from .places import state_dir

        try:
            store = FloodStore(self._private(state_dir(self.probe.paths)))
            verdict, state = store.check(event.executable, self.flood, uid=event.uid)
        except (OSError, TelemetryError) as e:
            self.log.warning("flood control unavailable (%s); the crash of %s is reported", e, event.executable)
            return True
        if verdict.suppressed:
            h = state.history(event.executable, event.uid)
            self.log.info(
                "crash of %s not reported (%s): %d suppressed for it so far; totals: %d reported, "
                "%d within the window, %d over the daily cap",
                event.executable, verdict.value, h.suppressed if h else 0,
                state.reported, state.suppressed_window, state.suppressed_cap,
            )
            return False
        return True

    def access_for(self, event: CrashEvent, root_fd: int | None) -> FileAccess:
        """How the crashed process's files are opened: owned by root, by us or by the
        crashed user, and inside its root when it lives in another mount namespace."""
        trusted = frozenset({0, os.geteuid()} | ({event.uid} if event.uid is not None else set()))
        if event.namespace is Namespace.FOREIGN:
            return FileAccess(trusted_uids=trusted, debug_dirs=self.debug_dirs, root_fd=root_fd,
                              use_host_paths=False)
        return FileAccess(trusted_uids=trusted, debug_dirs=self.debug_dirs,
                          require_build_id=event.namespace is Namespace.UNKNOWN)

    @functools.cached_property
    def cache(self):
        """The cache of parsed tables; root's in system mode, the user's own otherwise."""
        from .cache import Cache
        from .places import cache_dir

        return Cache(cache_dir(self.probe.paths), 0 if self.system else os.geteuid())

    def store_cache(self, updates) -> None:
        """Write what an analysis parsed; a cache that cannot be written costs only speed."""
        from .cache import CacheInvalid

        for build_id, data in updates:
            try:
                self.cache.store(data, build_id)
            except (OSError, TelemetryError, CacheInvalid) as e:
                self.log.info("cache entry %s not written: %s", build_id.hex(), e)
                return

    def report(self, event: CrashEvent, outcome: Outcome, read: Callable[[], CoreDump] | None,
               access: FileAccess | None, exe_path: str | None = None, store_cache: bool = True) -> Report:
        if outcome.action is Action.FIXED:
            return Report(outcome.category, outcome.category.fixed_payload)
        if outcome.action is Action.STUB or read is None or access is None:
            return Report(Category.CLR, stub_payload(event.header(), outcome.reason or "no core"))
        from .analyze import Analysis, analyze

        deadline = time.monotonic() + self.time_limit * 0.8
        try:
            with _watchdog(self.time_limit):
                core = read()
                analysis = analyze(core, access, exe_path=exe_path, deadline=deadline, cache=self.cache)
            if core.not_a_core:
                analysis = dataclasses.replace(analysis, unreadable=True)
        except TimeLimitReached:
            analysis = Analysis(None, (), f"time limit of {self.time_limit} s reached")
        except (TelemetryError, OSError) as e:
            analysis = Analysis(None, (), f"the core could not be read: {e}", unreadable=True)
        except Exception as e:  # a hostile core must never cost the report: say what failed
            self.log.debug("analysis failed", exc_info=True)
            analysis = Analysis(None, (), f"analysis failed: {type(e).__name__}: {e}")
        for note in analysis.problems:
            self.log.info("%s", note)
        payload = backtrace_payload(event.header(analysis.pid, analysis.executable, analysis.signal), analysis)
        if store_cache and analysis.cache_updates:
            self.store_cache(analysis.cache_updates)
        return Report(category_of(analysis), payload, analysis)

    def report_from_child(self, document: dict) -> Report:
        """The report an analysis child sent back (its values checked: it ran as the user)."""
        import base64
        import binascii

        category = Category.__members__.get(str(document.get("category")), Category.ERROR)
        payload = document.get("payload")
        if not isinstance(payload, str):
            payload = "Error: the analysis sent no payload\n"
        updates = []
        for item in document.get("cache") or ():
            try:
                updates.append((bytes.fromhex(item[0]), base64.b64decode(item[1], validate=True)))
            except (TypeError, ValueError, IndexError, binascii.Error):
                continue
        self.store_cache(updates)  # each entry is checked whole before it is written
        return Report(category, payload)

    def send(self, report: Report, on_behalf_of: CrashEvent | None = None) -> bool:
        """Send the report; as root, on behalf of the crashed process's user (its uid and
        gid in the socket's credentials), so telemprobd counts it in that user's share."""
        try:
            record = create_record(report.category.classification, report.category.severity, report.payload,
                                   truncate=True)
        except TelemetryError as e:
            self.log.error("Failed to create record: %s", e)
            return False
        sender = None
        if on_behalf_of is not None and on_behalf_of.uid is not None and os.geteuid() == 0:
            from telemetry.client import Credentials

            gid = on_behalf_of.gid if on_behalf_of.gid is not None else on_behalf_of.uid
            sender = Credentials(on_behalf_of.pid or os.getpid(), on_behalf_of.uid, gid)
        result = self.probe.send(record, on_behalf_of=sender)
        self.last_send = result
        if not result.sent:
            self.log.error("Failed to send record: %s", result.message)
            return False
        self.log.info("crash report sent (%s): %s", report.category.classification, result.message)
        return True


def preload() -> None:
    """Import everything reading and analysing a core imports lazily, before privileges are
    dropped (the new identity may not be able to read the interpreter's files)."""
    import elftools.dwarf.aranges  # noqa: F401
    import elftools.dwarf.callframe  # noqa: F401
    import elftools.dwarf.dwarfinfo  # noqa: F401
    import elftools.dwarf.lineprogram  # noqa: F401
    import elftools.elf.elffile  # noqa: F401

    from . import analyze, cache, corefile, demangle, places, source  # noqa: F401
    from .unwind import expr, x86_64  # noqa: F401

    expr._parser()
    demangle.preload()


def _service_uid() -> int | None:
    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return None


class _watchdog:
    """SIGALRM after `seconds`: the work in progress ends with TimeLimitReached; if even
    that does not finish within GRACE, the process exits."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def __enter__(self) -> _watchdog:
        self.fired = False
        self.previous = signal.signal(signal.SIGALRM, self._fire)
        signal.alarm(self.seconds)
        return self

    def _fire(self, signum, frame) -> None:
        if self.fired:
            os._exit(EXIT_FAILURE)
        self.fired = True
        signal.alarm(GRACE)
        raise TimeLimitReached(f"time limit of {self.seconds} s reached")

    def __exit__(self, *exc) -> None:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.previous)
