"""Crash-flood control: one report per executable per short window, and a daily cap, each
counted for the user whose process crashed (one user's crash loop never suppresses the
reports of another user's crashes of the same program).

`decide` is the pure rule over a `FloodState`; `FloodStore` keeps the state in a small
JSON file under the state directory, read and replaced under a lock so that concurrent
crashprobes (a crash loop starts one per crash) count every crash once.  The same file
keeps the counts of what was reported and what was suppressed, which the log line of a
suppressed crash repeats.

Whoever can write the state directory can plant a link, a FIFO or junk there: nothing
here follows a link or blocks on a FIFO, and a lock that cannot be had is an error to the
caller (`LockUnavailable`), who decides what an unknown flood state means.
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
import stat
import time
from dataclasses import dataclass, replace

from telemetry.errors import TelemetryError
from telemetry.fsutil import ensure_dir

from ..common import StateFile

DAY = 86400
MAX_EXECUTABLES = 512
CLOCK_SLACK = 300  # report times this far in the future are a clock that went back
STATE_NAME = "crashprobe-flood.json"
LOCK_WAIT = 5.0


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
    uid: int | None = None  # the crashed process's real uid (None: not known)

    @property
    def key(self) -> tuple[int | None, str]:
        return (self.uid, self.executable)


@dataclass(frozen=True)
class FloodState:
    histories: tuple[History, ...] = ()
    reported: int = 0
    suppressed_window: int = 0
    suppressed_cap: int = 0

    def history(self, executable: str, uid: int | None = None) -> History | None:
        for h in self.histories:
            if h.key == (uid, executable):
                return h
        return None


def decide(state: FloodState, executable: str, now: float, policy: FloodPolicy,
           uid: int | None = None) -> tuple[Verdict, FloodState]:
    """Whether this crash of `uid`'s process is reported, and the state that counts it."""
    old = state.history(executable, uid) or History(executable, (), 0, uid)
    recent = tuple(t for t in old.reports if now - DAY < t <= now + CLOCK_SLACK)
    if policy.window > 0 and recent and now - max(recent) < policy.window:
        verdict = Verdict.WITHIN_WINDOW
    elif len(recent) >= policy.daily_cap:
        verdict = Verdict.DAILY_CAP
    else:
        verdict = Verdict.REPORT
    if verdict is Verdict.REPORT:
        history = History(executable, (recent + (now,))[-max(policy.daily_cap, 1):], old.suppressed, uid)
    else:
        history = History(executable, recent, old.suppressed + 1, uid)
    others = tuple(h for h in state.histories if h.key != history.key)
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
            {"path": h.executable, "uid": h.uid, "reports": list(h.reports), "suppressed": h.suppressed}
            for h in state.histories
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(data: bytes) -> FloodState:
    """A damaged state file counts as no history (and is replaced), never as an error."""
    try:
        doc = json.loads(data)
        histories = tuple(
            History(str(e["path"]), tuple(float(t) for t in e["reports"]), int(e.get("suppressed", 0)),
                    None if e.get("uid") is None else int(e["uid"]))
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


class LockUnavailable(TelemetryError):
    """The lock could not be taken: its path is unusable (a link, not a file, no access)."""


class LockBusy(LockUnavailable):
    """Another process held the lock for the whole wait."""


class FloodStore:
    def __init__(self, state_dir: str):
        self.file = StateFile(os.path.join(state_dir, STATE_NAME))

    def check(self, executable: str, policy: FloodPolicy, now: float | None = None,
              uid: int | None = None) -> tuple[Verdict, FloodState]:
        """Count this crash; TelemetryError (LockUnavailable among them) or OSError when the
        state cannot be read under its lock and replaced."""
        now = time.time() if now is None else now
        with _locked(self.file.path + ".lock", LOCK_WAIT):
            verdict, new = decide(self.load(), executable, now, policy, uid)
            self.file.write(encode(new))
        return verdict, new

    def load(self) -> FloodState:
        """A missing or unreadable state file counts as no history."""
        try:
            data = self.file.read()
        except (OSError, TelemetryError):
            return FloodState()
        return FloodState() if data is None else decode(data)


class _locked:
    """An exclusive flock on `path` (created in a private directory if need be), waited for
    at most `timeout` seconds."""

    def __init__(self, path: str, timeout: float):
        self.path, self.timeout, self.fd = path, timeout, -1

    def __enter__(self) -> _locked:
        try:
            ensure_dir(os.path.dirname(self.path))
            # Read-only is enough for flock, and lets the other mode's user share the lock;
            # O_NONBLOCK: a FIFO planted here must not hang the open.
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                              0o644)
        except OSError as e:
            raise LockUnavailable(f"cannot open the lock {self.path}: {e.strerror}") from None
        except TelemetryError as e:  # the directory is a link or not a directory
            raise LockUnavailable(str(e)) from None
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise LockUnavailable(f"cannot use the lock {self.path}: not a regular file")
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
    return _locked(os.path.join(state_dir, "crashprobe.lock"), timeout)
