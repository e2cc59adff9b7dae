"""Analysing a core in a child process the privileged parent watches.

The analysis runs as the crashed user (who may read what their process mapped, and
nothing else), so that user can signal it: stop it, kill it.  The parent, still root,
holds the analysis lock and a deadline; the child never holds the lock.  A child that
is stopped, killed, crashes or runs past the deadline is killed and the crash is
reported without its backtrace, saying why; the lock is released at once.

The child's report comes back through a pipe as one JSON document of bounded size.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

RESULT_MAX = 48 << 20  # the report and the cache entries it parsed
POLL = 0.05


@dataclass(frozen=True)
class ChildResult:
    """What the analysis child sent back, or why there is nothing."""

    document: dict | None
    failure: str | None = None


def run_isolated(work: Callable[[], dict], deadline: float, keep_fds: tuple[int, ...] = (),
                 close_fds: tuple[int, ...] = ()) -> ChildResult:
    """`work()` in a forked child; its dict (JSON) comes back within `deadline` (monotonic)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(r)
            for fd in close_fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            data = json.dumps(work()).encode()
            if len(data) > RESULT_MAX:
                data = json.dumps({"failure": f"the report was {len(data)} bytes"}).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        except BaseException:  # noqa: BLE001 - the parent reports the failure
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    try:
        return _collect(pid, r, deadline)
    finally:
        os.close(r)


def _collect(pid: int, r: int, deadline: float) -> ChildResult:
    chunks: list[bytes] = []
    size = 0
    eof = False
    status: int | None = None
    while True:
        if status is None:
            done, st = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
            if done and os.WIFSTOPPED(st):
                _kill(pid)
                return ChildResult(None, "the analysis was stopped by a signal")
            if done:
                status = st
        if eof and status is not None:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _kill(pid)
            return ChildResult(None, "the analysis ran past its time limit")
        if not eof:
            ready, _, _ = select.select([r], [], [], min(POLL, remaining))
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    eof = True
                else:
                    size += len(chunk)
                    if size > RESULT_MAX:
                        _kill(pid)
                        return ChildResult(None, "the analysis sent too much")
                    chunks.append(chunk)
        else:
            time.sleep(POLL)
    if os.WIFSIGNALED(status):
        return ChildResult(None, f"the analysis was killed by signal {os.WTERMSIG(status)}")
    if os.waitstatus_to_exitcode(status) != 0 or not chunks:
        return ChildResult(None, "the analysis failed")
    try:
        document = json.loads(b"".join(chunks))
    except ValueError:
        return ChildResult(None, "the analysis sent an unreadable report")
    if not isinstance(document, dict):
        return ChildResult(None, "the analysis sent an unreadable report")
    failure = document.get("failure")
    return ChildResult(None, str(failure)) if failure else ChildResult(document)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
