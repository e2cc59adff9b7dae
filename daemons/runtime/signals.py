"""Signals as state: the one way every long-running program (the daemons, klogscanner,
journalprobe, the pstore probes) learns it should stop or reload.

A handler only records what arrived; it never raises.  An exception raised from a
handler lands wherever the main thread happens to be, and Python code such as
`logging`'s emit catches it there (as a "--- Logging error ---" traceback) and carries
on, so a program could ignore SIGTERM and skip saving its position.  Instead the
program's loops look at `stop_requested` and `take_reload()` at the points where
stopping is safe, and every wait goes through `wait()` or selects on `fileno()`: the
signal module writes a byte to that pipe from C as the signal arrives, so a sleep or a
poll ends at once, even if the signal came just before it started.

It lives with the daemons' runtime rather than in the `telemetry` library because
installing handlers is the business of a program, never of a library: a library that
took SIGTERM would take it from the program that imported it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGHUP,)


class Signals:
    """Records stop and reload signals for the loops to act on; a context manager that
    restores the previous handlers and wake-up fd on exit.  Main thread only (as every
    Python signal handler)."""

    def __init__(self, stop: Iterable[int] = STOP_SIGNALS, reload: Iterable[int] = (), *,
                 on_stop: Callable[[], None] | None = None, on_reload: Callable[[], None] | None = None):
        """`on_stop`/`on_reload` run in the handler, for a loop that keeps its own flag:
        they may only set state (never raise, block or log)."""
        self._stop_set = frozenset(int(s) for s in stop)
        self._reload_set = frozenset(int(s) for s in reload)
        self._on_stop = on_stop
        self._on_reload = on_reload
        self._stop_signal: int | None = None
        self._reloads = 0
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous: dict[int, object] = {}
        self._previous_wakeup = -1
        self._installed = False

    # --- set-up ---------------------------------------------------------------------

    def install(self) -> Signals:
        if self._installed:
            return self
        self._previous_wakeup = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        for signum in self._stop_set | self._reload_set:
            self._previous[signum] = signal.signal(signum, self._handle)
        self._installed = True
        return self

    def close(self) -> None:
        """Restore what was there before; the pipe is closed."""
        if self._installed:
            for signum, previous in self._previous.items():
                with contextlib.suppress(TypeError, ValueError):
                    signal.signal(signum, previous)  # type: ignore[arg-type]
            signal.set_wakeup_fd(self._previous_wakeup)
            self._installed = False
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._r = self._w = -1

    def __enter__(self) -> Signals:
        return self.install()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum in self._stop_set:
            if self._stop_signal is None:
                self._stop_signal = signum
            if self._on_stop is not None:
                self._on_stop()
        elif signum in self._reload_set:
            self._reloads += 1
            if self._on_reload is not None:
                self._on_reload()

    # --- what the loops look at -----------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        return self._stop_signal is not None

    @property
    def stop_signal(self) -> int | None:
        """The first stop signal received, or None."""
        return self._stop_signal

    @property
    def stop_name(self) -> str:
        return signal.Signals(self._stop_signal).name if self._stop_signal is not None else ""

    def take_reload(self) -> bool:
        """Whether a reload was asked since the last call (several count as one)."""
        asked, self._reloads = self._reloads > 0, 0
        return asked

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a stop from the program itself, as if `signum` had arrived."""
        self._handle(signum, None)
        with contextlib.suppress(OSError):
            os.write(self._w, bytes([signum & 0xFF]))

    def fileno(self) -> int:
        """Readable once a signal arrived: register it with a selector or epoll, then call
        `drain()` when it is."""
        return self._r

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._r, 512):
                pass

    def wait(self, timeout: float | None, fds: Iterable[int] = ()) -> list[int]:
        """Sleep until `timeout` passes, a signal arrives or one of `fds` is readable.

        Returns the readable fds among `fds` (empty on a timeout or a signal).  Returns
        at once when a stop was already asked, so no loop sleeps through one."""
        if self.stop_requested:
            return []
        watched = [self._r, *fds]
        try:
            readable, _, _ = select.select(watched, [], [], timeout)
        except InterruptedError:  # only when a handler raised; ours never does
            readable = []
        if self._r in readable:
            self.drain()
        return [fd for fd in readable if fd != self._r]


__all__ = ["RELOAD_SIGNALS", "STOP_SIGNALS", "Signals"]
