"""What every dispatcher is: records in, one future per record out, sent in batches.

`submit` never blocks and never raises: it returns a future that ends with a `Delivery`
once the dispatcher confirmed the record (for those that cannot confirm, once it was
handed over), or with a `DispatchFailed` saying why not.  Records submitted while the
event loop is busy are sent together on its next turn (`_send` gets them as one batch),
so one write or flush serves every request that arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

from telemetry.errors import TelemetryError

from ..model import NewRecord
from .config import Kind
from .message import Message


class DispatchFailed(TelemetryError):
    """The dispatcher could not take the record; the message says why, for the log."""


@dataclass(frozen=True)
class Delivery:
    duplicate: bool = False  # the stream already had this record id


class Observer(Protocol):
    """Where dispatchers report (the Prometheus metrics, or nothing in unit tests)."""

    def batch(self, kind: Kind, size: int) -> None: ...

    def connected(self, kind: Kind, up: bool) -> None: ...


class NoObserver:
    def batch(self, kind: Kind, size: int) -> None:
        pass

    def connected(self, kind: Kind, up: bool) -> None:
        pass


@dataclass
class Pending:
    record: NewRecord
    message: Message
    future: asyncio.Future
    since: float


def settle(future: asyncio.Future, result: object = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class Dispatcher:
    kind: ClassVar[Kind]

    def __init__(self, observer: Observer):
        self.observer = observer
        self._pending: list[Pending] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        """Send what is queued, then let go of connections."""
        self._drain()

    def submit(self, record: NewRecord, message: Message | None) -> asyncio.Future:
        assert self._loop is not None and message is not None, "dispatcher not started"
        future = self._loop.create_future()
        if not self._pending:
            self._loop.call_soon(self._drain)
        self._pending.append(Pending(record, message, future, time.perf_counter()))
        return future

    def _drain(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            self.observer.batch(self.kind, len(batch))
            self._send(batch)

    def _send(self, batch: list[Pending]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def fail_all(batch: list[Pending], why: str) -> None:
    error = DispatchFailed(why)
    for p in batch:
        settle(p.future, error=error)


def expire_after(loop: asyncio.AbstractEventLoop, seconds: float, batch: list[Pending], what: str,
                 on_expire: Callable[[Pending], None] | None = None) -> None:
    """Fail the records of `batch` still unconfirmed after `seconds`.

    The timer goes away with the batch's last answer, so a steady stream does not keep
    `seconds` worth of records alive.
    """

    def expire() -> None:
        error = DispatchFailed(f"{what} did not confirm the record within {seconds:g} s")
        for p in batch:
            if not p.future.done():
                if on_expire is not None:
                    on_expire(p)
                settle(p.future, error=error)

    timer = loop.call_later(seconds, expire)
    left = [len(batch)]

    def one_done(_: asyncio.Future) -> None:
        left[0] -= 1
        if not left[0]:
            timer.cancel()

    for p in batch:
        p.future.add_done_callback(one_done)
