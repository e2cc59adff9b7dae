"""telemprobd's syncs to disk, on a thread of their own.

An fsync of the queue's WAL takes a fraction of a millisecond to several, and the loop
used to wait for it with every sender of the batch.  Here the loop hands the fsyncs
(`SyncPlan.run`, which touches nothing but files) to one long-lived thread and goes on
reading and committing the next senders' records; the thread says it is done through an
eventfd that sits in the loop's epoll set.  One sync at a time: the core decides when
(`core.Ingest.sync_start_due`) and which replies each one releases.

The thread holds the interpreter lock only to start and finish a sync; the fsync itself
runs without it, as do the loop's own system calls, so neither waits long for the other.
"""

from __future__ import annotations

import os
import threading

from telemetry.daemons.store.database import SyncPlan


class Syncer:
    """Runs one `SyncPlan` at a time; `fileno()` is readable when one has ended."""

    def __init__(self) -> None:
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        # A plain lock as a binary semaphore: released by the loop to hand the thread a
        # plan (`_running`), taken by the thread to wait for one; nothing else needed.
        self._go = threading.Lock()
        self._go.acquire()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._running: SyncPlan | None = None
        self._error: OSError | None = None

    def fileno(self) -> int:
        return self._fd

    @property
    def running(self) -> bool:
        return self._running is not None

    def start(self, plan: SyncPlan) -> None:
        if self._running is not None:
            raise RuntimeError("a sync is already running")
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="telemprobd-sync", daemon=True)
            self._thread.start()
        self._running = plan
        self._go.release()

    def finished(self) -> tuple[SyncPlan, OSError | None] | None:
        """The sync that ended and its error (None: on disk), or None if it still runs."""
        if self._running is None:
            return None
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            return None
        plan, error = self._running, self._error
        self._running, self._error = None, None
        return plan, error

    def wait(self) -> tuple[SyncPlan, OSError | None] | None:
        """Block until the running sync ends (stopping); None if none runs."""
        if self._running is None:
            return None
        os.set_blocking(self._fd, True)
        try:
            return self.finished()
        finally:
            os.set_blocking(self._fd, False)

    def close(self) -> None:
        """End the thread after the sync it runs (the records are committed either way)."""
        if self._thread is not None:
            self.wait()
            self._closing = True
            self._go.release()
            self._thread.join()
            self._thread = None
        os.close(self._fd)

    def _work(self) -> None:
        while True:
            self._go.acquire()
            plan = self._running
            if self._closing or plan is None:
                return
            try:
                plan.run()
            except OSError as e:
                self._error = e
            except BaseException as e:  # never leave the loop waiting for an answer
                self._error = OSError(f"{type(e).__name__}: {e}")
            os.eventfd_write(self._fd, 1)
