"""From a validated record to its answer: route, hand to every dispatcher, let one decide.

The route is the first `[records]` pattern that matches the classification.  Every
dispatcher of the route gets the record at once; the answer waits only for the route's
reliable dispatcher: 201 once it confirmed the record (200 if it already had that record
id), 503 with Retry-After if it could not, so the sender keeps the record and tries again.
The others are best effort: their failures are logged and counted, never answered.

Every record gets a record id here if its sender gave none, so the store and every stream
know it by the same id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from telemetry.daemons.runtime.throttle import LogThrottle

from ..model import NewRecord, StoredRecord, to_json
from ..store import StoreError
from ..writer import Reply
from .base import Delivery, Dispatcher, DispatchFailed
from .config import DispatchConfig, Kind
from .message import build_message, domain_of

log = logging.getLogger("telemetry-collector")


class Outcome(enum.Enum):
    """What became of a valid record; the value names it in the metrics."""

    ACCEPTED = "accepted"  # 201
    DUPLICATE = "duplicate"  # 200: the deciding dispatcher had it already
    UNAVAILABLE = "unavailable"  # 503: the deciding dispatcher could not confirm it
    DROPPED = "dropped"  # 201, and the route sends it nowhere


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    outcome: Outcome
    retry_after: int | None = None


class RouterObserver(Protocol):
    def record(self, domain: str, outcome: Outcome) -> None: ...

    def dispatched(self, kind: Kind, ok: bool, seconds: float) -> None: ...


class Router:
    def __init__(self, config: DispatchConfig, dispatchers: Mapping[Kind, Dispatcher], observer: RouterObserver):
        missing = config.kinds - set(dispatchers)
        assert not missing, f"no dispatcher for {missing}"
        self.config = config
        self.dispatchers = dispatchers
        self.observer = observer
        # One throttle per dispatcher: a stream that is away must not hide the database failing.
        self._failures = {kind: LogThrottle(burst=5, logger=log) for kind in dispatchers}

    async def submit(self, record: NewRecord) -> Answer:
        route = self.config.route(record.classification)
        if record.record_id is None:
            record = dataclasses.replace(record, record_id=uuid.uuid4().hex)
        message = build_message(record, self.config.namespace) if route.needs_message else None
        decider: asyncio.Future | None = None
        now = time.perf_counter()
        for kind in route.dispatchers:
            future = self.dispatchers[kind].submit(record, message)
            future.add_done_callback(functools.partial(self._observe, kind, now))
            if kind is route.reliable:
                decider = future
        domain = domain_of(record.classification)
        if decider is None:
            outcome = Outcome.ACCEPTED if route.dispatchers else Outcome.DROPPED
            self.observer.record(domain, outcome)
            return Answer(201, _unstored_body(record), outcome)
        try:
            result = await decider
        except (DispatchFailed, StoreError):
            # Why is in the log (`_observe`); a sender learns no server names or addresses.
            self.observer.record(domain, Outcome.UNAVAILABLE)
            assert route.reliable is not None
            return Answer(503, to_json({"message": f"The record was not accepted: {route.reliable.label} is "
                                                   "unavailable; try again later"}),
                          Outcome.UNAVAILABLE, retry_after=self.config.retry_after)
        if isinstance(result, Reply):
            outcome = Outcome.DUPLICATE if result.duplicate else Outcome.ACCEPTED
            self.observer.record(domain, outcome)
            return Answer(result.status, result.body, outcome)
        assert isinstance(result, Delivery)
        outcome = Outcome.DUPLICATE if result.duplicate else Outcome.ACCEPTED
        self.observer.record(domain, outcome)
        return Answer(200 if result.duplicate else 201, _unstored_body(record), outcome)

    def _observe(self, kind: Kind, since: float, future: asyncio.Future) -> None:
        error: BaseException | None = DispatchFailed("cancelled") if future.cancelled() else future.exception()
        self.observer.dispatched(kind, error is None, time.perf_counter() - since)
        if error is not None:
            self._failures[kind].log(time.monotonic(), logging.WARNING, "%s dispatcher: %s", kind.value, error)

    async def start(self) -> None:
        started: list[Dispatcher] = []
        try:
            for d in self.dispatchers.values():
                await d.start()
                started.append(d)
        except BaseException:
            for d in started:
                await d.stop()
            raise

    async def stop(self) -> None:
        for d in self.dispatchers.values():
            try:
                await d.stop()
            except Exception as e:  # noqa: BLE001 - shutting down: report and go on
                log.error("stopping the %s dispatcher: %s", d.kind.value, e)


def _unstored_body(record: NewRecord) -> bytes:
    """The 201 body when the store did not decide: the record as stored rows show it, no id."""
    doc = StoredRecord(0, record).as_json_dict()
    doc["id"] = None
    return to_json(doc)
