"""telempostd's rules, with no I/O: which queued record is sent, what each answer means
for it, when its fate is written down, and when the daemon must look again.

`Courier` is fed queue rows, transport answers and the time, and answers with what to do
next (`step`): read rows (`Fetch`), start a request (`Send`), write the fates decided so
far (`Settle`: journal first, then the queue), wait for an answer in flight (`WAIT`), or
nothing more this pass (`DONE`).  `main.Postd` is the loop that does each of these.

What can lose or duplicate a record is decided here, and tested by property:

* A row leaves the queue only with a final fate (delivered on 2xx, rejected on another
  4xx, rejected locally, expired, set aside, kept locally when delivery is off), and
  every final fate is journaled in the same `Settle` that deletes the row.
* A row is sent again only after an answer that asks for it (408, 429, 5xx, a connection
  failure, a configuration error); every answer settles the row it was for exactly once.
* Answered requests whose fate is not written yet plus the requests in flight never
  exceed the settle window (`max_in_flight`): when the daemon is killed, at most that
  many records are sent again.  The answers of a window are written together once the
  last of them is in (one write per window, not one per poll), unless one request keeps
  the others waiting longer than `SETTLE_HOLD`.  Fates decided without a request are
  gathered into batches of up to `max_batch` rows or `max_delay` seconds.

A row queued with its request header lines (`request_headers`, made and validated by
telemprobd at admission) is sent as it is: nothing is parsed, built or checked again but
the size of the request head; its journal entry takes its three fields from those lines
(`Brief`).  A row without them (queued by an older version) is parsed into its Record
once per process (`_load`), not on every attempt: a row kept for another attempt keeps
its parsed record beside its identity (bounded) until its fate is final.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from telemetry.contract import (
    check_header_block,
    check_record,
    check_record_id,
    printable_id,
    stored_header_lines,
)
from telemetry.daemons.postd import spool
from telemetry.daemons.postd.backoff import Gate, full_jitter, next_attempt_at
from telemetry.daemons.postd.endpoint import DeliverySettings
from telemetry.daemons.postd.outcome import Response, Verdict, classify
from telemetry.daemons.postd.request import Request, RequestFormat, build_request, prepared_request
from telemetry.daemons.runtime.throttle import LogThrottle
from telemetry.daemons.store.delivery import LastError, Pause
from telemetry.daemons.store.journal import Counter, JournalEntry, Outcome, SetAside, entry_for
from telemetry.daemons.store.queue import QueuedRecord
from telemetry.record import Record, RecordError, parse_header_block

log = logging.getLogger("telempostd")

DAEMON = "telempostd"
# A pass logs the first records it sets aside or that are rejected one line each, and
# only counts the rest: a queue of damaged rows must not flood the log (the journal has
# every one of them).
RECORD_WARNINGS_PER_PASS = 10
LOADED_MAX = 256  # parsed records kept for rows whose fate is not final yet
# Before the collector has taken a record (since the start or the last reload), a 4xx is
# not yet believed to be about the record: when this many different records all get the
# same answer, the answer is about what is sent (request_format, server), not about them.
UNIFORM_REJECTIONS = 3
# Answered requests wait at most this long for the rest of their window before they are
# written without them (a slow request must not hold up the next ones for longer).
SETTLE_HOLD = 0.05
_CLASSIFICATION = b"classification: "
_EVENT_ID = b"event_id: "


@dataclass(frozen=True)
class Settings:
    """What telempostd takes from the config, checked at load."""

    delivery: DeliverySettings
    request_format: RequestFormat
    tid: tuple[str, str]
    base_delay: float
    retry_max_delay: float
    record_expiry: int
    delivery_enabled: bool
    retention_enabled: bool
    recycling: bool
    idle_after: float  # daemon_idle_time
    spool_dir: str
    log_level: str
    metrics_textfile: str = ""
    spool_max_size_kib: int = -1
    probe_interval: float = 0.0  # retry_probe_interval; 0: wait out every backoff


@dataclass(frozen=True)
class SettlePolicy:
    """When decided fates are written.  `window`: the most POSTs a kill may repeat.  The
    fates of answered requests not yet written plus the requests in flight never exceed
    it: a new request starts only after the answered ones are settled when it would (None:
    `max_in_flight`, the design's bound; the answers of one poll are settled together).
    Fates decided without a request (expiry, local rejection) are written `max_batch` at a
    time, or once the first has waited `max_delay` seconds."""

    window: int | None = None
    max_batch: int = spool.COMMIT_SLICE
    max_delay: float = spool.COMMIT_INTERVAL


# After a kill, at most max_in_flight records are sent again.
SETTLE_IN_WINDOW = SettlePolicy()


# What the journal and the log need of a record sent, from its stored header lines:
# classification (str), event_id (str), creation_timestamp (int or None).
Brief = collections.namedtuple("Brief", ["classification", "event_id", "creation_timestamp"])


def _value(line: bytes) -> str:
    return line.partition(b": ")[2].decode("utf-8", errors="replace")


def brief(lines: tuple[bytes, ...]) -> Brief:
    """From `contract.request_header_block`'s lines (fixed positions, wire order)."""
    stamp = _value(lines[4])
    return Brief(_value(lines[1])[:122], _value(lines[14])[:32], int(stamp) if stamp.isdecimal() else None)


@dataclass(frozen=True)
class Decision:
    """The fate of one queue row: final (`outcome` set) or tried again later."""

    row: QueuedRecord
    record: Record | Brief | None
    counter: Counter
    outcome: Outcome | None = None
    detail: str = ""
    http_status: int | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0


@dataclass(frozen=True)
class Settlement:
    """What a Settle writes: the journal (entries, payload copies, set-aside rows) first,
    then the queue (rows deleted by position, rows rescheduled, counters)."""

    decisions: tuple[Decision, ...]
    entries: tuple[JournalEntry, ...]
    retained: tuple[tuple[str, bytes], ...]
    aside: tuple[SetAside, ...]
    delete: tuple[int, ...]  # queue positions: a damaged row's id may not even be text
    retry: tuple[tuple[str, int, float, str], ...]
    counts: collections.Counter[Counter]

    @property
    def queue_counters(self) -> dict[tuple[str, str], int]:
        return {(DAEMON, c.value): n for c, n in self.counts.items()}


class Query(enum.Enum):
    EXPIRED = "expired"  # rows received before `cutoff`
    DUE = "due"  # rows due at `now`, after queue position `after`
    ALL = "all"  # every row after queue position `after`
    PROBE = "probe"  # the oldest row not deferred at `now`, due or not


@dataclass(frozen=True)
class Fetch:
    """An action for the shell: read queued rows of `query` (past `after`, at most `limit`)."""
    query: Query
    after: int = 0
    cutoff: float = 0.0
    now: float = 0.0
    limit: int = spool.FETCH_SLICE


# One per record sent: a tuple is the cheapest value to make (collections', as typing's
# NamedTuple would load typing into the idle daemon).  token: the row's queue position,
# unique even in a damaged queue; request: a Request.
Send = collections.namedtuple("Send", ["token", "request"])


@dataclass(frozen=True)
class Settle:
    """An action for the shell: write what the collector answered (a settlement) to the queue."""
    settlement: Settlement


@dataclass(frozen=True)
class Release:
    """The collector answers again: rows waiting for a retry at or before `until` are due now."""

    until: float


class _Signal(enum.Enum):
    WAIT = "wait"  # requests are in flight: poll the transport
    DONE = "done"  # nothing more this pass


WAIT = _Signal.WAIT
DONE = _Signal.DONE
Action = Fetch | Send | Settle | Release | _Signal


class _Phase(enum.Enum):
    EXPIRE = 1
    DELIVER = 2
    FINISH = 3


class Courier:
    """The state of telempostd across passes; a pass runs from `start_pass` to DONE."""

    def __init__(self, settings: Settings, *, boot_id: str, rng: random.Random | None = None,
                 policy: SettlePolicy = SETTLE_IN_WINDOW):
        self.settings = settings
        self.boot_id = boot_id
        self.rng = rng or random.Random()
        self.policy = policy
        self.gate = Gate()
        self.view = spool.QueueView(0, None, None)
        self.stopping = False
        self._config_error_logged = False
        self._warnings = LogThrottle(RECORD_WARNINGS_PER_PASS, math.inf, logger=log)
        self._loaded: collections.OrderedDict[int, tuple[bytes, bytes, str, Record | None, str]] = (
            collections.OrderedDict())
        self._phase = _Phase.FINISH
        self._after = 0
        self._buffer: collections.deque[QueuedRecord] = collections.deque()
        self._exhausted = False
        self._inflight: dict[int, tuple[QueuedRecord, Record | Brief]] = {}
        self._decided: list[Decision] = []
        self._decided_since = 0.0
        self._answered = 0  # decisions in _decided that answered a request (a kill repeats them)
        self._answered_since = 0.0  # when the first of them was answered
        # What `telemctl status` shows (store/delivery.py).
        self.last_success: float | None = None
        self.last_error: LastError | None = None
        self.pause: Pause | None = None
        # While the gate is closed by a failure: when one request checks whether the
        # collector answers again, and that request's row.
        self.probe_at: float | None = None
        self._probe_token: int | None = None
        self._probe_row: QueuedRecord | None = None
        self._probe_fetch = False
        self._release_until: float | None = None
        # Rejections met before the collector took any record: answer -> record ids.
        self._judges_records = False
        self._suspect: dict[tuple[int | None, str], set[str]] = {}

    # --- a pass -------------------------------------------------------------------------

    def start_pass(self, now: float) -> None:
        self._phase = _Phase.EXPIRE
        self._after = 0
        self._buffer.clear()
        self._exhausted = False
        self._decided = []
        self._answered = 0
        self._probe_row = None
        self._probe_fetch = False
        self._warnings.restart(now)

    def step(self, now: float, capacity: int) -> Action:
        """The next thing to do; `capacity`: how many more requests the transport takes now."""
        if self._decided and self._settle_due(now):
            return self._settle(now)
        if self._phase is _Phase.EXPIRE:
            if self._decided:  # settled before the next read, which would return them again
                return self._settle(now)
            return Fetch(Query.EXPIRED, cutoff=spool.expiry_cutoff(now, self.settings.record_expiry))
        if self._phase is _Phase.DELIVER:
            action = self._deliver(now, capacity)
            if action is not None:
                return action
        if self._inflight:
            return WAIT
        if self._decided:
            return self._settle(now)
        self._phase = _Phase.FINISH
        return DONE

    def fetched(self, rows: Sequence[QueuedRecord], now: float) -> None:
        """The rows a Fetch asked for."""
        if self._probe_fetch:
            self._probe_fetch = False
            self._probe_row = rows[0] if rows else None
            if self._probe_row is None:
                self.probe_at = None  # nothing to send: the next record queued wakes us
            return
        if self._phase is _Phase.EXPIRE:
            if not rows:
                self._phase = _Phase.DELIVER
                return
            for row in rows:
                self._decide(self._expired(row, self._load(row)[0]), now)
            return
        if not rows:
            self._exhausted = True
            return
        self._after = rows[-1].seq
        self._buffer.extend(rows)

    def answered(self, token: int, response: Response, now: float) -> None:
        """A request finished (or failed to): its row's fate."""
        sent = self._inflight.pop(token, None)
        if sent is not None:
            if not self._answered:
                self._answered_since = now
            self._answered += 1
            self._decide(self._judge(sent[0], sent[1], response, now), now)

    def refused(self, token: int, reason: str, now: float) -> None:
        """The transport would not take the request (the record's fault, not the collector's)."""
        sent = self._inflight.pop(token, None)
        if sent is not None:
            self._decide(self._local(sent[0], sent[1], Outcome.REJECTED_LOCAL, f"not sent: {reason}"), now)

    def abandon(self) -> list[QueuedRecord]:
        """The loop lost its transport with requests in flight: their rows stay as they are."""
        rows = [row for row, _ in self._inflight.values()]
        self._inflight.clear()
        self._probe_token = None
        return rows

    def finish_pass(self) -> int:
        """After DONE: how many record warnings the pass held back (to be said in one line)."""
        return self._warnings.take_suppressed()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def wait_limit(self, now: float, longest: float) -> float:
        """How long a WAIT may block: answers held for the rest of their window are
        written when their hold ends, even if nothing else is answered by then."""
        if self._answered:
            return max(0.0, min(longest, self._answered_since + SETTLE_HOLD - now))
        return longest

    def _deliver(self, now: float, capacity: int) -> Action | None:
        if self.stopping:
            return None
        if not self.settings.delivery_enabled:
            return self._keep_local(now)
        if self._release_until is not None:
            if self._inflight:
                return None  # their answers first: a row read again must not be in flight
            if self._decided:
                return self._settle(now)
            until, self._release_until = self._release_until, None
            self._after, self._exhausted = 0, False
            self._buffer.clear()
            return Release(until)
        window = self.policy.window or self.settings.delivery.max_in_flight
        if not self.gate.is_open(now):
            if self._answered and self._answered + len(self._inflight) >= window:
                return self._settle(now)
            return self._probe(now, capacity)
        self.probe_at = None
        self.pause = None
        while capacity > 0 and self.gate.is_open(now):
            if self._answered + len(self._inflight) >= window:
                # One more request would put more than the window at risk of a repeat: the
                # answered ones are written first, with the rest of the window once it is in.
                if self._answered and (not self._inflight or now - self._answered_since >= SETTLE_HOLD):
                    return self._settle(now)
                if len(self._buffer) < window and not self._exhausted:
                    return Fetch(Query.DUE, after=self._after, now=now)  # read on while they are out
                return None
            if not self._buffer:
                if self._exhausted:
                    return None
                return Fetch(Query.DUE, after=self._after, now=now)
            row = self._buffer.popleft()
            prepared = self._prepare(row, now)
            if isinstance(prepared, Decision):
                self._decide(prepared, now)
                if self._settle_due(now):
                    return self._settle(now)
                continue
            record, request = prepared
            self._inflight[row.seq] = (row, record)
            return Send(row.seq, request)
        return None

    def _probe(self, now: float, capacity: int) -> Action | None:
        """While a failure holds the gate: one request every probe_interval, so that the
        backlog goes as soon as the collector answers, not when the backoff ends."""
        if (self.probe_at is None or now < self.probe_at or capacity <= 0 or self._inflight
                or self.gate.hard):
            return None
        row, self._probe_row = self._probe_row, None
        if row is None:
            self._probe_fetch = True
            return Fetch(Query.PROBE, now=now, limit=1)
        self.probe_at = now + self.settings.probe_interval
        prepared = self._prepare(row, now)
        if isinstance(prepared, Decision):
            self._decide(prepared, now)
            return None
        record, request = prepared
        self._inflight[row.seq] = (row, record)
        self._probe_token = row.seq
        return Send(row.seq, request)

    def _schedule_probe(self, now: float) -> None:
        interval = self.settings.probe_interval
        if interval > 0 and not self.gate.hard and self.gate.open_at > now + interval:
            if self.probe_at is None or self.probe_at <= now:
                self.probe_at = now + interval
        else:
            self.probe_at = None

    def _reached(self, now: float, probe: bool, old_open_at: float) -> None:
        """The collector answered a record (taken or refused): the gate opens (unless the
        collector or the configuration holds it); after a probe, what waited goes now."""
        self.gate = self.gate.after_success()
        if probe and self.gate.is_open(now) and self.pause is not Pause.CONFIG_ERROR:
            log.info("the collector answers again; the records waiting for it are sent now")
            self._release_until = old_open_at
            self.probe_at = None
            self.pause = None

    def _keep_local(self, now: float) -> Action | None:
        """record_server_delivery_enabled=false: journal (and retain) every record, post none."""
        while True:
            if not self._buffer:
                if self._exhausted:
                    return None
                return Fetch(Query.ALL, after=self._after)
            row = self._buffer.popleft()
            self._decide(self._prepare(row, now), now)  # type: ignore[arg-type]
            if self._settle_due(now):
                return self._settle(now)

    # --- settling -----------------------------------------------------------------------

    def _decide(self, decision: Decision, now: float) -> None:
        if not self._decided:
            self._decided_since = now
        self._decided.append(decision)
        row = decision.row
        if decision.outcome is not None:
            self._loaded.pop(row.seq, None)
        elif isinstance(decision.record, Record):  # it will be read again: keep what it parsed into
            self._loaded[row.seq] = (row.headers, row.payload, row.record_id, decision.record, "")
            self._loaded.move_to_end(row.seq)
            if len(self._loaded) > LOADED_MAX:
                self._loaded.popitem(last=False)

    def _settle_due(self, now: float) -> bool:
        return len(self._decided) >= self.policy.max_batch or now - self._decided_since >= self.policy.max_delay

    def _settle(self, now: float) -> Settle:
        decisions, self._decided = self._decided, []
        self._answered = 0
        return Settle(settlement(decisions, boot_id=self.boot_id, now=now, retention=self.settings.retention_enabled))

    # --- one row ------------------------------------------------------------------------

    def _load(self, row: QueuedRecord) -> tuple[Record | None, str]:
        """The row's record: parsed when first seen, kept while the row waits for another
        attempt (`_decide`); a damaged row's problem."""
        seen = self._loaded.get(row.seq)
        if seen is not None and seen[0] == row.headers and seen[1] == row.payload and seen[2] == row.record_id:
            return seen[3], seen[4]
        try:
            return parse_header_block(row.headers, row.payload), ""
        except RecordError as e:
            return None, str(e)
        except (ValueError, TypeError) as e:  # bytes no record check anticipated
            return None, f"{type(e).__name__}: {e}"

    def _local(self, row: QueuedRecord, record: Record | Brief | None, outcome: Outcome, detail: str) -> Decision:
        return Decision(row, record, Counter(outcome.value), outcome, detail, attempts=row.attempts)

    def _expired(self, row: QueuedRecord, record: Record | Brief | None) -> Decision:
        detail = f"not delivered within record_expiry ({self.settings.record_expiry} min)"
        if row.last_error:
            detail += f"; last error: {row.last_error}"
        return self._local(row, record, Outcome.EXPIRED, detail)

    def _warn(self, now: float, message: str, *args: object) -> None:
        """A record set aside or rejected: a warning for the first few of a pass, a count for the rest."""
        self._warnings.log(now, logging.WARNING, message, *args)

    def _prepare(self, row: QueuedRecord, now: float) -> Decision | tuple[Record | Brief, Request]:
        """A local decision, or the request to send."""
        s = self.settings
        if row.request_headers is not None and s.delivery_enabled and s.request_format is RequestFormat.HEADERS:
            lines = stored_header_lines(row.request_headers)
            if lines is not None and check_record_id(row.record_id) is None:
                return self._prepared(row, lines, now)
        record, problem = self._load(row)
        bad_id = check_record_id(row.record_id)
        if bad_id is not None:  # it would go into a header line: never sent
            record, problem = None, str(bad_id)
        violation = None
        request = None
        if record is not None and s.delivery_enabled:
            violation = check_record(record)
            if violation is None:
                request = build_request(record, row.record_id, s.request_format, s.tid)
                if s.request_format is RequestFormat.HEADERS:
                    violation = check_header_block(request.headers)
        disposition = spool.disposition(
            received_at=row.received_at, now=now, record_expiry_minutes=s.record_expiry,
            readable=record is not None, acceptable=violation is None, delivery_enabled=s.delivery_enabled,
        )
        if disposition is spool.Disposition.SEND:
            assert record is not None and request is not None
            return record, request
        if disposition is spool.Disposition.EXPIRE:
            return self._expired(row, record)
        if disposition is spool.Disposition.SET_ASIDE:
            self._warn(now, "queue row %s holds no readable record, set aside: %s", printable_id(row.record_id),
                       problem)
            return self._local(row, None, Outcome.SET_ASIDE, f"unreadable record: {problem}")
        if disposition is spool.Disposition.KEEP_LOCAL:
            return self._local(row, record, Outcome.DROPPED, "not sent: record_server_delivery_enabled is false")
        self._warn(now, "record %s (%s) rejected without sending: %s", row.record_id,
                   record.classification if record else "?", violation)
        return self._local(row, record, Outcome.REJECTED_LOCAL, f"not sent: {violation}")

    def _prepared(self, row: QueuedRecord, lines: tuple[bytes, ...], now: float) -> Decision | tuple[Brief, Request]:
        """A row telemprobd validated and stored the header lines of: sent as stored."""
        s = self.settings
        summary = brief(lines)
        if spool.is_expired(row.received_at, now, s.record_expiry):
            return self._expired(row, summary)
        request = prepared_request(lines, row.payload, row.record_id, s.tid)
        violation = check_header_block(request.headers)
        if violation is None:
            return summary, request
        self._warn(now, "record %s (%s) rejected without sending: %s", row.record_id, summary.classification,
                   violation)
        return self._local(row, summary, Outcome.REJECTED_LOCAL, f"not sent: {violation}")

    def _judge(self, row: QueuedRecord, record: Record | Brief, response: Response, now: float) -> Decision:
        s = self.settings
        c = classify(response, now)
        probe = self._probe_token == row.seq
        if probe:
            self._probe_token = None
        was_open, old_open_at = self.gate.is_open(now), self.gate.open_at
        if c.verdict is Verdict.DELIVERED:
            self._reached(now, probe, old_open_at)
            self._config_error_logged = False
            self._judges_records = True
            self._suspect.clear()
            self.last_success = now
            return Decision(row, record, Counter.DELIVERED, Outcome.DELIVERED, c.detail, c.status, row.attempts + 1)
        if c.verdict is Verdict.REJECTED:
            self._reached(now, probe, old_open_at)
            held = self._unjudged_rejection(row, record, c.detail, c.status, now)
            if held is not None:
                return held
            self._warn(now, "record %s (%s) rejected by the collector: %s", row.record_id, record.classification,
                       c.detail)
            return Decision(row, record, Counter.REJECTED, Outcome.REJECTED, c.detail, c.status, row.attempts + 1)
        self.last_error = LastError(now, c.detail, c.status)
        if c.verdict is Verdict.CONFIG_ERROR:
            return self._config_error(row, record, c.detail, c.status, now)
        if probe:  # the collector still does not answer: the row waits for the gate as before
            if c.retry_after is not None:
                self.gate = self.gate.after_failure(now, base=s.base_delay, cap=s.retry_max_delay,
                                                    rand=self.rng.random(), retry_after=c.retry_after)
                self.pause = Pause.RETRY_AFTER
                self._schedule_probe(now)
            return Decision(row, record, Counter.RETRIED, None, c.detail, c.status, row.attempts,
                            row.next_attempt_at)
        self.gate = self.gate.after_failure(now, base=s.base_delay, cap=s.retry_max_delay,
                                            rand=self.rng.random(), retry_after=c.retry_after)
        attempts = row.attempts + 1
        when = next_attempt_at(attempts, self.gate, now, base=s.base_delay, cap=s.retry_max_delay,
                               rand=self.rng.random())
        if self.pause is not Pause.CONFIG_ERROR and not self.gate.is_open(now):
            self.pause = Pause.RETRY_AFTER if self.gate.hard else Pause.BACKOFF
        self._schedule_probe(now)
        if was_open:
            probing = (f"; checking every {s.probe_interval:g} s whether it answers again"
                       if self.probe_at is not None else "")
            log.warning("delivery failed (%s); trying again in %.0f s%s", c.detail, self.gate.open_at - now,
                        probing)
        return Decision(row, record, Counter.RETRIED, None, c.detail, c.status, attempts, when)

    def _config_error(self, row: QueuedRecord, record: Record | Brief, detail: str, status: int | None,
                      now: float) -> Decision:
        self.gate = self.gate.hold(now, self.settings.retry_max_delay)
        self.pause, self.probe_at = Pause.CONFIG_ERROR, None
        if not self._config_error_logged:
            self._config_error_logged = True
            log.error("delivery stopped: %s; records are kept, next attempt in %.0f s or after "
                      "a reload (SIGHUP)", detail, self.gate.open_at - now)
        return Decision(row, record, Counter.CONFIG_ERROR, None, detail, status, row.attempts, row.next_attempt_at)

    def _unjudged_rejection(self, row: QueuedRecord, record: Record | Brief, detail: str, status: int | None,
                            now: float) -> Decision | None:
        """A 4xx before the collector has taken any record in this configuration: kept (None
        once the collector is known to judge records one by one).  The same answer for
        UNIFORM_REJECTIONS different records is a configuration error: nothing is sent
        until a reload or retry_max_delay, and every record is kept."""
        if self._judges_records:
            return None
        self._suspect.setdefault((status, detail), set()).add(row.record_id)
        if len(self._suspect) > 1:  # different answers for different records: they are judged
            self._judges_records = True
            self._suspect.clear()
            return None
        self.last_error = LastError(now, detail, status)
        if len(self._suspect[(status, detail)]) >= UNIFORM_REJECTIONS:
            why = (f"every record is refused with the same answer ({detail}): a configuration error "
                   "(check request_format, server and tidheader)")
            return self._config_error(row, record, why, status, now)
        s = self.settings
        attempts = row.attempts + 1
        when = max(self.gate.open_at, now + full_jitter(attempts, s.base_delay, s.retry_max_delay, self.rng.random()))
        return Decision(row, record, Counter.RETRIED, None,
                        f"{detail} (kept until the collector takes a record: it may refuse every one)",
                        status, attempts, when)

    # --- between passes ---------------------------------------------------------------

    def reload(self, settings: Settings) -> None:
        """New settings; the gate reopens (the fix may be in them), and whether the
        collector judges records one by one is to be learnt again."""
        self.settings = settings
        self.gate = Gate()
        self._config_error_logged = False
        self.pause = self.probe_at = None
        self._judges_records = False
        self._suspect.clear()

    def next_wake(self, now: float, idle_deadline: float | None) -> float | None:
        wake = spool.next_wake(now, self.view, self.gate, record_expiry_minutes=self.settings.record_expiry,
                               delivery_enabled=self.settings.delivery_enabled, idle_deadline=idle_deadline)
        if self.probe_at is not None and self.view.rows and not self.gate.is_open(now):
            wake = self.probe_at if wake is None else min(wake, self.probe_at)
        return wake

    def pass_due(self, now: float, wake: float | None) -> bool:
        """Whether a pass can do anything now, `wake` being when the loop would look anyway.

        While the collector is waited for (the gate is closed) and records are queued,
        records queued meanwhile can neither be sent nor move the next wake (they are due
        no earlier than the gate opens, and expire after the oldest): a pass reads the
        whole queue, so during an outage it waits for its time instead of following
        every commit of telemprobd."""
        if not self.settings.delivery_enabled or self.gate.is_open(now) or not self.view.rows:
            return True
        return wake is not None and now >= wake


def _header_value(headers: bytes, prefix: bytes, limit: int) -> str:
    """Best-effort field of a row that does not parse, for its journal entry."""
    for line in headers.split(b"\n"):
        if line.startswith(prefix):
            return line[len(prefix):][:limit].decode("utf-8", errors="replace")
    return ""


def settlement(decisions: Sequence[Decision], *, boot_id: str, now: float, retention: bool) -> Settlement:
    """The journal and queue writes that record `decisions`, in queue order."""
    entries: list[JournalEntry] = []
    retained: list[tuple[str, bytes]] = []
    aside: list[SetAside] = []
    delete: list[int] = []
    retry: list[tuple[str, int, float, str]] = []
    counts: collections.Counter[Counter] = collections.Counter()
    ordered = tuple(sorted(decisions, key=lambda d: d.row.seq))
    for d in ordered:
        counts[d.counter] += 1
        row = d.row
        if d.outcome is None:
            retry.append((row.record_id, d.attempts, d.next_attempt_at, d.detail))
            continue
        delete.append(row.seq)
        rid = printable_id(row.record_id)  # the key of its journal entry and payload copy
        entries.append(entry_for(
            rid, d.record, d.outcome, timestamp=now, boot_id=boot_id, http_status=d.http_status, detail=d.detail,
            classification="" if d.record else _header_value(row.headers, _CLASSIFICATION, 122),
            event_id="" if d.record else _header_value(row.headers, _EVENT_ID, 32),
        ))
        if d.outcome is Outcome.SET_ASIDE:
            aside.append(SetAside(rid, now, d.detail, row.headers, row.payload))
        elif retention:
            retained.append((rid, row.payload))
    return Settlement(ordered, tuple(entries), tuple(retained), tuple(aside), tuple(delete), tuple(retry), counts)
