"""`telemctl status`: the pipeline's state gathered into values, and their two renderings.

Gathering only reads: the opt-in file, the queue database (read-only, beside the daemons
writing it), its counters table, and what telempostd last learnt about the collector
(`store/delivery.py`: last delivery, last error, why delivery is paused).  Which daemon
runs is decided by the caller (systemd or the user-mode supervisor) and handed in.
`format_text` and `to_json` are pure.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from telemetry.ack import AckStatus
from telemetry.config import Notice, NoticeKind
from telemetry.daemons.ctl.journal_view import visible
from telemetry.daemons.store import delivery as delivery_state
from telemetry.daemons.store import journal
from telemetry.daemons.store.delivery import DeliveryState, Pause
from telemetry.daemons.store.queue import QUEUE_DB, Queue, legacy_path, queue_dir
from telemetry.errors import TelemetryError
from telemetry.hints import run_phrase
from telemetry.optin import is_opted_in
from telemetry.paths import Paths

PROBD = "telemprobd"
POSTD = "telempostd"

# Counters shown even while zero, in this order; any other counter found follows them.
# The names are the daemons' (telemprobd: rejected:<ack status>; telempostd: its
# Counter enum).
CORE_COUNTERS: dict[str, tuple[str, ...]] = {
    PROBD: ("received", "staged", "deferred",
            *(f"rejected:{s.value}" for s in AckStatus if not s.kept)),
    POSTD: tuple(c.value for c in journal.Counter),
}


@dataclass(frozen=True)
class DaemonInfo:
    name: str
    state: str  # active, inactive, failed, … (systemd's words)
    pid: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class QueueInfo:
    path: str
    error: str | None = None  # why it could not be read; None when it could (or is absent)
    records: int = 0
    bytes: int = 0
    staged_records: int = 0  # never tried yet
    staged_bytes: int = 0
    spooled_records: int = 0  # tried and waiting for another attempt
    spooled_bytes: int = 0
    deferred_records: int = 0  # staged records held back by the rate limit (strategy spool)
    cap_bytes: int | None = None  # spool_max_size; None: no cap
    next_retry: float | None = None  # next delivery attempt; None: nothing queued


@dataclass(frozen=True)
class Counter:
    daemon: str
    name: str
    value: int


@dataclass(frozen=True)
class Status:
    mode: str
    opted_in: bool
    opt_in_file: str
    config_file: str | None
    socket_path: str
    daemons: tuple[DaemonInfo, ...]
    queue: QueueInfo
    counters: tuple[Counter, ...]
    now: float
    config_notices: tuple[Notice, ...] = ()  # what the config file has that was ignored or changed
    delivery: DeliveryState | None = None  # what telempostd last wrote, if anything
    delivery_error: str | None = None  # why it could not be read
    delivery_enabled: bool = True  # record_server_delivery_enabled
    reload_hint: str = "'telemctl reload'"  # as it works in this mode, for this user
    delivery_current: bool = False  # written by the telempostd running now (its pause still holds)


# --- gathering ----------------------------------------------------------------------------

def cap_bytes(spool_max_size_kib: int) -> int | None:
    return None if spool_max_size_kib < 0 else spool_max_size_kib * 1024


def read_queue(spool_dir: str, spool_max_size_kib: int, now: float) -> tuple[QueueInfo, dict[tuple[str, str], int]]:
    """Queue figures and raw counters; an absent queue is an empty one, an unreadable one says why."""
    path = os.path.join(queue_dir(spool_dir), QUEUE_DB)
    if not os.path.exists(path) and os.path.exists(legacy_path(spool_dir)):
        path = legacy_path(spool_dir)  # not moved yet: no daemon has opened it since the upgrade
    cap = cap_bytes(spool_max_size_kib)
    if not os.path.exists(path):
        if os.path.isdir(spool_dir) and not os.access(spool_dir, os.R_OK | os.X_OK):
            return QueueInfo(path, error="permission denied", cap_bytes=cap), {}
        return QueueInfo(path, cap_bytes=cap), {}
    try:
        queue = Queue(spool_dir, readonly=True)
    except TelemetryError as e:
        return QueueInfo(path, error=_short(str(e), path), cap_bytes=cap), {}
    try:
        b = queue.breakdown(now)
        counters = queue.counters()
    except TelemetryError as e:
        return QueueInfo(path, error=_short(str(e), path), cap_bytes=cap), {}
    finally:
        queue.close()
    info = QueueInfo(
        path=path, records=b.rows, bytes=b.bytes, staged_records=b.staged_rows, staged_bytes=b.staged_bytes,
        spooled_records=b.rows - b.staged_rows, spooled_bytes=b.bytes - b.staged_bytes,
        deferred_records=b.deferred_rows, cap_bytes=cap, next_retry=b.next_due,
    )
    return info, counters


def _short(message: str, path: str) -> str:
    return message[len(path) + 2:] if message.startswith(path + ": ") else message


def counters_of(raw: Mapping[tuple[str, str], int], daemons: Sequence[str] = (PROBD, POSTD)) -> tuple[Counter, ...]:
    """The core counters of each daemon (zero when absent), then the rest by name."""
    out: list[Counter] = []
    for daemon in daemons:
        core = CORE_COUNTERS.get(daemon, ())
        out.extend(Counter(daemon, name, int(raw.get((daemon, name), 0))) for name in core)
        extra = sorted(n for d, n in raw if d == daemon and n not in core)
        out.extend(Counter(daemon, name, int(raw[(daemon, name)])) for name in extra)
    for d, n in sorted(raw):
        if d not in daemons:
            out.append(Counter(d, n, int(raw[(d, n)])))
    return tuple(out)


def gather(paths: Paths, *, spool_dir: str, socket_path: str, spool_max_size_kib: int,
           config_file: str | None, daemons: Sequence[DaemonInfo], now: float | None = None,
           config_notices: Sequence[Notice] = (), delivery_enabled: bool = True) -> Status:
    now = time.time() if now is None else now
    queue, raw = read_queue(spool_dir, spool_max_size_kib, now)
    delivery, delivery_error = None, None
    try:
        delivery = delivery_state.read(spool_dir)
    except OSError as e:
        delivery_error = e.strerror or str(e)
    postd_pid = next((d.pid for d in daemons if d.name == POSTD and d.state == "active"), None)
    return Status(
        mode=paths.mode.value, opted_in=is_opted_in(paths), opt_in_file=paths.opt_in_file,
        config_file=config_file, socket_path=socket_path, daemons=tuple(daemons), queue=queue,
        counters=counters_of(raw), now=now, config_notices=tuple(config_notices),
        delivery=delivery, delivery_current=delivery is not None and delivery.pid == postd_pid,
        delivery_error=delivery_error, delivery_enabled=delivery_enabled, reload_hint=run_phrase(paths, "reload"),
    )


# --- rendering ----------------------------------------------------------------------------

def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def human_delay(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _records(n: int) -> str:
    return f"{n} record" + ("" if n == 1 else "s")


def format_retry(next_retry: float | None, now: float,
                 localtime: Callable[[float], time.struct_time] = time.localtime) -> str:
    if next_retry is None:
        return "none (the queue is empty)"
    if next_retry <= now:
        return "due now"
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", localtime(int(next_retry)))
    return f"{when} (in {human_delay(next_retry - now)})"


def _when(t: float, now: float, localtime: Callable[[float], time.struct_time]) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", localtime(int(t)))
    if t <= now:
        return f"{stamp} ({human_delay(now - t)} ago)"
    return f"{stamp} (in {human_delay(t - now)})"


_PAUSE_WORDS = {
    Pause.BACKOFF: "waiting after a failure",
    Pause.RETRY_AFTER: "the collector asked to wait",
    Pause.CONFIG_ERROR: "a configuration error; fix it and run {reload}",
}


def paused(st: Status) -> bool:
    """Delivery is paused now by the telempostd that runs (an old pause died with its process)."""
    d = st.delivery
    return (st.delivery_current and d is not None and d.paused is not None and d.paused_until is not None
            and d.paused_until > st.now)


def format_delivery(st: Status, localtime: Callable[[float], time.struct_time] = time.localtime) -> list[str]:
    d = st.delivery
    if not st.delivery_enabled:
        return ["Delivery:    off (record_server_delivery_enabled=false): records are journaled, never sent"]
    if st.delivery_error is not None:
        return [f"Delivery:    cannot read {delivery_state.STATE_FILE} ({st.delivery_error})"]
    if d is None:
        return ["Delivery:    nothing tried yet"]
    lines = ["Delivery:"]
    lines.append("  last sent: " + ("never" if d.last_success is None else _when(d.last_success, st.now, localtime)))
    if d.last_error is not None:
        # The collector's words: made inert for a terminal.
        detail = visible(d.last_error.detail, one_line=True)
        lines.append(f"  last error: {_when(d.last_error.at, st.now, localtime)}: {detail}")
    if paused(st):
        assert d.paused is not None and d.paused_until is not None
        words = _PAUSE_WORDS[d.paused].format(reload=st.reload_hint)
        text = f"  paused:    until {_when(d.paused_until, st.now, localtime)}: {words}"
        if d.probe_at is not None and d.probe_at < d.paused_until:
            text += f"; next check whether the collector answers {_when(max(d.probe_at, st.now), st.now, localtime)}"
        lines.append(text)
    return lines


def format_queue(q: QueueInfo) -> list[str]:
    if q.error:
        return [f"Queue:       {q.path}: cannot read ({q.error})"]
    if q.cap_bytes is None:
        cap = "no cap"
    else:
        share = 100.0 * q.bytes / q.cap_bytes if q.cap_bytes else 100.0
        cap = f"of {human_bytes(q.cap_bytes)} cap ({share:.0f} %)"
    return [
        f"Queue:       {_records(q.records)}, {human_bytes(q.bytes)} {cap}",
        f"  staged:    {_records(q.staged_records)}, {human_bytes(q.staged_bytes)} (not tried yet)",
        f"    of them: {_records(q.deferred_records)} held by the rate limit",
        f"  spooled:   {_records(q.spooled_records)}, {human_bytes(q.spooled_bytes)} (waiting for a retry)",
    ]


def format_text(st: Status, localtime: Callable[[float], time.struct_time] = time.localtime) -> str:
    lines = [
        f"Mode:        {st.mode}",
        f"Opted in:    {'yes' if st.opted_in else 'no'} ({st.opt_in_file})",
        f"Config:      {st.config_file or 'built-in defaults'}",
    ]
    lines.extend(f"  ignored:   {n}" if n.kind is not NoticeKind.CLAMPED else f"  changed:   {n}"
                 for n in st.config_notices)
    for d in st.daemons:
        state = d.state + (f" (pid {d.pid})" if d.pid else "")
        lines.append(f"{d.name + ':':<12} {state}" + (f"; {d.detail}" if d.detail else ""))
    lines.append(f"Socket:      {st.socket_path}")
    lines.extend(format_queue(st.queue))
    if not st.queue.error:
        next_retry = st.queue.next_retry
        if paused(st) and next_retry is not None:
            assert st.delivery is not None and st.delivery.paused_until is not None
            next_retry = max(next_retry, st.delivery.paused_until)
        lines.append(f"Next retry:  {format_retry(next_retry, st.now, localtime)}")
    lines.extend(format_delivery(st, localtime))
    lines.append("Counters:")
    width = max((len(c.name) for c in st.counters), default=0)
    previous = None
    for c in st.counters:
        label = c.daemon if c.daemon != previous else ""
        previous = c.daemon
        lines.append(f"  {label:<11} {c.name:<{width}} {c.value:>8}")
    return "\n".join(lines)


def to_json(st: Status) -> dict:
    q = st.queue
    counters: dict[str, dict[str, int]] = {}
    for c in st.counters:
        counters.setdefault(c.daemon, {})[c.name] = c.value
    return {
        "mode": st.mode,
        "opted_in": st.opted_in,
        "opt_in_file": st.opt_in_file,
        "config_file": st.config_file,
        "config_notices": [{"kind": n.kind.value, "path": n.path, "line": n.line, "text": n.text}
                           for n in st.config_notices],
        "socket_path": st.socket_path,
        "daemons": {d.name: {"state": d.state, "pid": d.pid, "detail": d.detail} for d in st.daemons},
        "queue": {
            "path": q.path,
            "error": q.error,
            "records": q.records,
            "bytes": q.bytes,
            "cap_bytes": q.cap_bytes,
            "staged": {"records": q.staged_records, "bytes": q.staged_bytes, "deferred_records": q.deferred_records},
            "spooled": {"records": q.spooled_records, "bytes": q.spooled_bytes},
            "deferred_records": q.deferred_records,
            "next_retry": q.next_retry,
        },
        "delivery": _delivery_json(st),
        "delivery_error": st.delivery_error,
        "counters": counters,
        "time": st.now,
    }


def _delivery_json(st: Status) -> dict | None:
    d = st.delivery
    if d is None:
        return None
    err = d.last_error
    now_paused = paused(st)
    return {
        "last_success": d.last_success,
        "last_error": None if err is None else {"time": err.at, "detail": err.detail, "http_status": err.status},
        "paused": d.paused.value if now_paused and d.paused is not None else None,
        "paused_until": d.paused_until if now_paused else None,
        "next_probe": d.probe_at if now_paused else None,
    }
