"""The client's counters in Prometheus' text format: `telemctl metrics` and the textfile.

The figures are `telemctl status`'s (status.py): the daemons' counters from the queue's
counters table, the queue's size, whether the machine is opted in, and how many entries
the journal holds.  They are rendered by prometheus-client, as the collector's /metrics
is, one family per counter: ``telemprobd_received_total``, ``telemprobd_rejected_total``
with a ``reason`` label, ``telempostd_delivered_total``, … (``-`` becomes ``_``).

`write_textfile` writes a file for node-exporter's textfile collector the way it asks:
a temporary file beside it, renamed over it.  The daemons call `TextfileWriter` from
their housekeeping when ``metrics_textfile`` is set.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from telemetry.daemons.ctl.status import counters_of, read_queue
from telemetry.daemons.store import delivery as delivery_state
from telemetry.daemons.store import journal
from telemetry.errors import TelemetryError
from telemetry.optin import is_opted_in
from telemetry.paths import Paths

log = logging.getLogger(__name__)

TEXTFILE_INTERVAL = 60.0  # seconds between two rewrites by a daemon
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_]")
_REJECTED = "rejected:"


class MetricsError(TelemetryError):
    pass


def metric_name(daemon: str, counter: str) -> tuple[str, dict[str, str]]:
    """A counter of the counters table as a family name and labels (pure)."""
    if counter.startswith(_REJECTED):
        return f"{daemon}_rejected", {"reason": counter[len(_REJECTED):]}
    return f"{daemon}_{_NOT_IN_NAME.sub('_', counter)}", {}


class ClientFigures(Collector):
    """What one `telemctl metrics` reads, as metric families."""

    def __init__(self, paths: Paths, spool_dir: str, spool_max_size_kib: int, now: float | None = None):
        self.paths = paths
        self.spool_dir = spool_dir
        self.spool_max_size_kib = spool_max_size_kib
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = time.time() if self.now is None else self.now
        queue, counters = read_queue(self.spool_dir, self.spool_max_size_kib, now)
        if queue.error:
            raise MetricsError(f"cannot read the queue {queue.path}: {queue.error}")
        yield from counter_families({(c.daemon, c.name): c.value for c in counters_of(counters)})
        for name, help_text, value in (
            ("telemetry_queue_records", "Records in the queue", queue.records),
            ("telemetry_queue_bytes", "Bytes of the records in the queue", queue.bytes),
            ("telemetry_queue_staged_records", "Queued records never tried", queue.staged_records),
            ("telemetry_queue_spooled_records", "Queued records waiting for another attempt", queue.spooled_records),
            ("telemetry_queue_deferred_records", "Queued records held by the rate limit", queue.deferred_records),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)
        if queue.cap_bytes is not None:
            yield GaugeMetricFamily("telemetry_queue_cap_bytes", "spool_max_size in bytes", value=queue.cap_bytes)
        if queue.next_retry is not None:
            yield GaugeMetricFamily("telemetry_queue_next_attempt_timestamp_seconds",
                                    "When telempostd next tries the collector", value=queue.next_retry)
        try:
            delivery = delivery_state.read(self.spool_dir)
        except OSError:
            delivery = None
        if delivery is not None and delivery.last_success is not None:
            yield GaugeMetricFamily("telempostd_last_success_timestamp_seconds",
                                    "When the collector last took a record", value=delivery.last_success)
        if delivery is not None and delivery.last_error is not None:
            yield GaugeMetricFamily("telempostd_last_error_timestamp_seconds",
                                    "When delivery last failed", value=delivery.last_error.at)
        yield GaugeMetricFamily("telemetry_opted_in", "1 when telemetry is opted in",
                                value=1 if is_opted_in(self.paths) else 0)
        entries = journal_entries(self.paths.journal_dir)
        if entries is not None:
            yield GaugeMetricFamily("telemetry_journal_entries", "Entries in the journal (the last 10,000 fates)",
                                    value=entries)


def counter_families(counters: Mapping[tuple[str, str], int]) -> list[Metric]:
    """One family per counter name, with the reasons of rejections as labels (pure)."""
    families: dict[str, CounterMetricFamily] = {}
    for (daemon, counter), value in counters.items():
        name, labels = metric_name(daemon, counter)
        family = families.get(name)
        if family is None:
            family = families[name] = CounterMetricFamily(name, f"{daemon}: {name.split('_', 1)[1]}",
                                                          labels=sorted(labels))
        family.add_metric([labels[k] for k in sorted(labels)], value)
    return list(families.values())


def journal_entries(journal_dir: str) -> int | None:
    try:
        j = journal.open_for_reading(journal_dir)
    except TelemetryError:
        return None
    if j is None:
        return 0
    try:
        return j.count()
    except Exception:  # noqa: BLE001 - a journal being recovered: leave the figure out
        return None
    finally:
        j.close()


def render(figures: ClientFigures) -> bytes:
    registry = CollectorRegistry()
    registry.register(figures)
    return generate_latest(registry)


def write_textfile(path: str, figures: ClientFigures) -> None:
    registry = CollectorRegistry()
    registry.register(figures)
    try:
        write_to_textfile(path, registry)
    except OSError as e:
        raise MetricsError(f"cannot write {path}: {e.strerror}") from None


class TextfileWriter:
    """For the daemons: rewrite the textfile at most every TEXTFILE_INTERVAL seconds."""

    def __init__(self, path: str, paths: Paths, spool_dir: str, spool_max_size_kib: int):
        self.path = path
        self.figures = ClientFigures(paths, spool_dir, spool_max_size_kib)
        self._next = 0.0
        self._failed = False

    def write_if_due(self, now: float, *, force: bool = False) -> None:
        if not force and now < self._next:
            return
        self._next = now + TEXTFILE_INTERVAL
        try:
            write_textfile(self.path, self.figures)
            self._failed = False
        except (MetricsError, OSError) as e:
            if not self._failed:  # once per failure streak, not every minute
                log.warning("metrics_textfile: %s", e)
            self._failed = True


def refresh_textfile(writer: TextfileWriter | None, path: str, paths: Paths, spool_dir: str,
                     spool_max_size_kib: int, now: float) -> TextfileWriter | None:
    """For the daemons' housekeeping: the writer for `path` (None: no textfile), used when due."""
    if not path:
        return None
    if writer is None or writer.path != path or writer.figures.spool_dir != spool_dir:
        writer = TextfileWriter(path, paths, spool_dir, spool_max_size_kib)
    writer.write_if_due(now)
    return writer
