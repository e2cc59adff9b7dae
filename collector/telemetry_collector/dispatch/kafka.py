"""Kafka through confluent-kafka (librdkafka): fleet-telemetry's preferred dispatcher.

Topics are ``<namespace>.<domain>``, the key is the record id (so one record's retries
land in one partition and consumers can drop repeats), the value is the JSON message and
a ``Telemetry-Schema`` header names its version.  Every ``[kafka]`` setting goes to
librdkafka as written; `producer_settings` adds only what the collector's promise needs:
when kafka decides a route's answer, ``acks=all`` and idempotence (a setting that
contradicts them is an error), and a delivery timeout no longer than ``ack_timeout``
unless one is set.  librdkafka batches by itself (``linger.ms``), so the records of many
requests go out in one produce request; a record is confirmed by its delivery report.

Delivery reports are served by one thread calling ``poll``; it hands each poll's reports
to the event loop in one wake-up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

from .base import (
    Delivery,
    Dispatcher,
    DispatchFailed,
    Observer,
    Pending,
    expire_after,
    fail_all,
    settle,
)
from .config import DispatchConfigError, Kind
from .message import SCHEMA_HEADER, SCHEMA_VERSION

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.05  # seconds the delivery-report thread waits in poll
_HEADERS = [(SCHEMA_HEADER, str(SCHEMA_VERSION).encode())]
_RELIABLE = {"acks": ("all", "-1"), "enable.idempotence": ("true",)}
_ACKS_ALIASES = ("acks", "request.required.acks")


def producer_settings(user: Mapping[str, str], *, reliable: bool, ack_timeout: float) -> dict[str, str]:
    """librdkafka settings: the user's, and those a reliable route needs (pure)."""
    conf = {"client.id": "telemetry-collector", "linger.ms": "5", **user}
    if "delivery.timeout.ms" not in conf and "message.timeout.ms" not in conf:
        conf["message.timeout.ms"] = str(max(1, int(ack_timeout * 1000)))
    if reliable:
        acks = next((conf[k] for k in _ACKS_ALIASES if k in conf), None)
        if acks is not None and acks.lower() not in _RELIABLE["acks"]:
            raise DispatchConfigError(f"[kafka] acks = {acks!r}: a route whose answer kafka decides needs acks=all")
        if conf.get("enable.idempotence", "true").lower() != "true":
            raise DispatchConfigError("[kafka] enable.idempotence = false: a route whose answer kafka decides "
                                      "needs it (no reordered or doubled retries inside librdkafka)")
        if acks is None:
            conf["acks"] = "all"
        conf["enable.idempotence"] = "true"
    return conf


class KafkaDispatcher(Dispatcher):
    kind = Kind.KAFKA

    def __init__(self, settings: Mapping[str, str], *, reliable: bool, ack_timeout: float, observer: Observer):
        super().__init__(observer)
        self.conf = producer_settings(settings, reliable=reliable, ack_timeout=ack_timeout)
        self.ack_timeout = ack_timeout
        self._producer: Any = None  # confluent_kafka.Producer, imported on start
        self._thread: threading.Thread | None = None
        self._running = False
        self._reports: list[tuple[Pending, object]] = []
        self._lock = threading.Lock()

    async def start(self) -> None:
        await super().start()
        try:
            import confluent_kafka
        except ImportError:
            raise DispatchFailed("the kafka dispatcher needs confluent-kafka: "
                                 "pip install 'telemetry-collector[kafka]'") from None
        try:
            self._producer = confluent_kafka.Producer({**self.conf, "error_cb": self._on_error})
        except confluent_kafka.KafkaException as e:
            raise DispatchConfigError(f"[kafka]: {e.args[0].str() if e.args else e}") from None
        self._running = True
        self._thread = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._thread.start()
        self.observer.connected(self.kind, True)

    def _on_error(self, error) -> None:
        log.warning("kafka: %s", error.str())

    def _send(self, batch: list[Pending]) -> None:
        assert self._loop is not None
        producer = self._producer
        if producer is None:
            fail_all(batch, "kafka producer is not running")
            return
        expire_after(self._loop, self.ack_timeout, batch, "kafka")
        for p in batch:
            m = p.message
            try:
                producer.produce(m.channel, m.body, m.key, headers=_HEADERS,
                                 on_delivery=lambda err, msg, p=p: self._report(p, err))
            except BufferError:
                settle(p.future, error=DispatchFailed("kafka: librdkafka's queue is full (queue.buffering.max.*)"))
            except Exception as e:  # noqa: BLE001 - KafkaException for a bad topic, …
                settle(p.future, error=DispatchFailed(f"kafka: {e}"))
        producer.poll(0)

    def _report(self, p: Pending, err) -> None:
        """In whichever thread polls: kept until that poll ends."""
        with self._lock:
            self._reports.append((p, err))

    def _poll(self) -> None:
        while self._running:
            self._producer.poll(POLL_INTERVAL)
            self._hand_over()

    def _hand_over(self) -> None:
        with self._lock:
            reports, self._reports = self._reports, []
        if reports and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(_settle_reports, reports)
            except RuntimeError:  # the loop is closed
                pass

    async def stop(self) -> None:
        await super().stop()
        producer = self._producer
        if producer is not None:
            left = await asyncio.to_thread(producer.flush, self.ack_timeout)
            if left:
                log.warning("kafka: %d records not delivered at shutdown", left)
        self._running = False
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        self._hand_over()
        self.observer.connected(self.kind, False)


def _settle_reports(reports: list[tuple[Pending, object]]) -> None:
    for p, err in reports:
        if err is None:
            settle(p.future, Delivery())
        else:
            settle(p.future, error=DispatchFailed(f"kafka: {err.str()}"))  # type: ignore[attr-defined]
