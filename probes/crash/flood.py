"""Crash-flood control: one report per executable per short window, and a daily cap.

`decide` is the pure rule over a `FloodState`; `FloodStore` keeps the state in a small
JSON file under the state directory, read and replaced under a lock so that concurrent
crashprobes (a crash loop starts one per crash) count every crash once.  Counters of what
was reported and what was suppressed live in the same file for `telemctl status`.
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
import time
from dataclasses import dataclass, replace

from telemetry.errors import TelemetryError
from telemetry.fsutil import atomic_write, ensure_dir

DAY = 86400
MAX_EXECUTABLES = 512
CLOCK_SLACK = 300  # report times this far in the future are a clock that went back
STATE_NAME = "crashprobe-flood.json"
LOCK_WAIT = 5.0
STATE_MAX = 1 << 20


class Verdict(enum.Enum):
    REPORT = "report"
    WITHIN_WINDOW = "within-window"
    DAILY_CAP = "daily-cap"

    @property
    def suppressed(self) -> bool:
        return self is not Verdict.REPORT


@dataclass(frozen=True)
class FloodPolicy:
    window: int  # seconds; 0 turns the window off
    daily_cap: int


@dataclass(frozen=True)
class History:
    executable: str
    reports: tuple[float, ...]  # times of reports sent within the last day, oldest first
    suppressed: int = 0


@dataclass(frozen=True)
class FloodState:
    histories: tuple[History, ...] = ()
    reported: int = 0
    suppressed_window: int = 0
    suppressed_cap: int = 0

    def history(self, executable: str) -> History | None:
        for h in self.histories:
            if h.executable == executable:
                return h
        return None


def decide(state: FloodState, executable: str, now: float, policy: FloodPolicy) -> tuple[Verdict, FloodState]:
    """Whether this crash is reported, and the state that counts it."""
    old = state.history(executable) or History(executable, ())
    recent = tuple(t for t in old.reports if now - DAY < t <= now + CLOCK_SLACK)
    if policy.window > 0 and recent and now - max(recent) < policy.window:
        verdict = Verdict.WITHIN_WINDOW
    elif len(recent) >= policy.daily_cap:
        verdict = Verdict.DAILY_CAP
    else:
        verdict = Verdict.REPORT
    if verdict is Verdict.REPORT:
        history = History(executable, (recent + (now,))[-max(policy.daily_cap, 1):], old.suppressed)
    else:
        history = History(executable, recent, old.suppressed + 1)
    others = tuple(h for h in state.histories if h.executable != executable)
    histories = (others + (history,))[-MAX_EXECUTABLES:]
    new = replace(
        state,
        histories=histories,
        reported=state.reported + (verdict is Verdict.REPORT),
        suppressed_window=state.suppressed_window + (verdict is Verdict.WITHIN_WINDOW),
        suppressed_cap=state.suppressed_cap + (verdict is Verdict.DAILY_CAP),
    )
    return verdict, new


def encode(state: FloodState) -> bytes:
    doc = {
        "version": 1,
        "reported": state.reported,
        "suppressed_window": state.suppressed_window,
        "suppressed_cap": state.suppressed_cap,
        "executables": [
            {"path": h.executable, "reports": list(h.reports), "suppressed": h.suppressed} for h in state.histories
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(data: bytes) -> FloodState:
    """A damaged state file counts as no history (and is replaced), never as an error."""
    try:
        doc = json.loads(data)
        histories = tuple(
            History(str(e["path"]), tuple(float(t) for t in e["reports"]), int(e.get("suppressed", 0)))
            for e in doc["executables"]
        )
        return FloodState(
            histories[-MAX_EXECUTABLES:],
            int(doc.get("reported", 0)),
            int(doc.get("suppressed_window", 0)),
            int(doc.get("suppressed_cap", 0)),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return FloodState()


class LockBusy(TelemetryError):
    pass


class FloodStore:
    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, STATE_NAME)

    def check(self, executable: str, policy: FloodPolicy, now: float | None = None) -> tuple[Verdict, FloodState]:
        now = time.time() if now is None else now
        ensure_dir(self.state_dir)
        with _locked(self.path + ".lock", LOCK_WAIT):
            state = self.load()
            verdict, new = decide(state, executable, now, policy)
            atomic_write(self.path, encode(new), 0o600)
        return verdict, new

    def load(self) -> FloodState:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return FloodState()
        except OSError:
            return FloodState()
        try:
            return decode(os.read(fd, STATE_MAX))
        finally:
            os.close(fd)


class _locked:
    """An exclusive flock on `path`, waited for at most `timeout` seconds."""

    def __init__(self, path: str, timeout: float):
        self.path, self.timeout, self.fd = path, timeout, -1

    def __enter__(self) -> _locked:
        # Read-only is enough for flock, and lets the other mode's user share the lock.
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    raise LockBusy(f"{self.path} stayed locked for {self.timeout:.0f} s") from None
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def analysis_lock(state_dir: str, timeout: float) -> _locked:
    """One crash analysed at a time: a crash storm must not start an unwinder per crash."""
    ensure_dir(state_dir)
    return _locked(os.path.join(state_dir, "crashprobe.lock"), timeout)
