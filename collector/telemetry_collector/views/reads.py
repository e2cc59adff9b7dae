"""What the views read, as functions of a `Store` (run on a reader connection, off the loop).

Each is a few indexed statements over the counters and crash tables kept at ingestion
(`derive`), or a page of records read newest first along an index; none reads a payload
except the one record shown, or one example per crash group.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..dburl import Backend
from ..derive import crashes, oopses
from ..derive.counts import DAY, HOUR, RECORD_SOURCE, Field
from ..derive.guilty import NeverGuilty, default_list
from ..derive.stacks import UNKNOWN_FUNCTION, Domain
from ..derive.tables import never_guilty
from ..model import StoredRecord
from ..store import Store
from . import buildorder
from .periods import Period
from .recordfilter import IdRange, RecordFilter, where


@dataclass(frozen=True)
class RecordRow:
    """A row of the Records view: the record without its payload, and the payload's size."""

    id: int
    classification: str
    severity: int
    machine_id: str
    build: str
    arch: str
    platform: str
    ts_capture: int
    ts_reception: int
    payload_size: int


@dataclass(frozen=True)
class RecordPage:
    rows: list[RecordRow]
    newer: int | None  # cursor: show records after this id
    older: int | None  # cursor: show records before this id


def _size(store: Store) -> str:
    # PostgreSQL reads the size from the value's header, without fetching a TOASTed payload.
    return "octet_length(payload)" if store.backend is Backend.POSTGRESQL else "length(payload)"


def id_range(store: Store, start: int | None, until: int | None) -> IdRange | None:
    """The ids of records received in [start, until), from the hours' id ranges; None when
    no hour in it holds a record."""
    first_hour = (start or 0) // HOUR
    last_hour = ((until - 1) // HOUR) if until is not None else 2**62
    row = store.rows("SELECT min(first_id), max(last_id) FROM reception_hours WHERE hour >= ? AND hour <= ?",
                     (first_hour, last_hour), "reading the records' hours")[0]
    return None if row[0] is None else IdRange(int(row[0]), int(row[1]))


DENSE = 0.01  # a prefix matching this share of the records is read along the ids


def prefix_share(store: Store, f: RecordFilter) -> float:
    """The share of the records in the filter's days whose classification has its prefix,
    from the day counters."""
    first = (f.received_from or 0) // DAY
    last = ((f.received_until - 1) // DAY) if f.received_until is not None else 2**31
    rows = store.rows("SELECT value, sum(records) FROM tallies WHERE source = ? AND name = ? AND day >= ? "
                      "AND day <= ? GROUP BY value", (RECORD_SOURCE, Field.CLASSIFICATION, first, last),
                      "reading counters")
    total = sum(int(n) for _, n in rows)
    prefix = f.prefix or ""
    return sum(int(n) for v, n in rows if v.startswith(prefix)) / total if total else 0.0


def record_page(store: Store, f: RecordFilter) -> RecordPage:
    ids = None
    if f.received_from is not None or f.received_until is not None:
        ids = id_range(store, f.received_from, f.received_until)
        if ids is None:
            return RecordPage([], None, None)
    by_id = f.prefix is not None and prefix_share(store, f) >= DENSE
    condition, params = where(f, ids, by_id=by_id)
    backwards = f.after is not None and f.before is None
    sql = (f"SELECT id, classification, severity, machine_id, build, arch, host_type, ts_capture, ts_reception, "
           f"{_size(store)} FROM records WHERE {condition} ORDER BY id {'ASC' if backwards else 'DESC'} LIMIT ?")
    found = store.rows(sql, (*params, f.limit + 1), "reading records")
    more = len(found) > f.limit
    found = found[: f.limit]
    if backwards:
        found.reverse()
    rows = [RecordRow(int(r[0]), r[1], int(r[2]), r[3], r[4], r[5], r[6], int(r[7]), int(r[8]), int(r[9] or 0))
            for r in found]
    if not rows:
        return RecordPage([], None, None)
    newer: int | None
    older: int | None
    if backwards:
        newer = rows[0].id if more else None
        older = rows[-1].id
    else:
        newer = rows[0].id if f.before is not None else None
        older = rows[-1].id if more else None
    return RecordPage(rows, newer, older)


def one_record(store: Store, record_id: int) -> StoredRecord | None:
    found = store.records_by_id([record_id])
    return found[0] if found else None


# --- counters --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Count:
    value: str
    records: int
    first_seen: int  # the first record's id

    @property
    def build(self) -> str:
        return self.value


def tallies(store: Store, source: str, name: str, period: Period) -> list[Count]:
    """Records per value over the period, most first."""
    rows = store.rows("SELECT value, sum(records), min(first_id) FROM tallies WHERE source = ? AND name = ? "
                      "AND day >= ? AND day <= ? GROUP BY value", (source, name, period.first_day, period.last_day),
                      "reading counters")
    counts = [Count(r[0], int(r[1]), int(r[2])) for r in rows]
    return sorted(counts, key=lambda c: (-c.records, c.value))


def tallies_by_day(store: Store, source: str, name: str, period: Period) -> list[tuple[int, str, int]]:
    """(day, value, records) over the period, by day."""
    rows = store.rows("SELECT day, value, sum(records) FROM tallies WHERE source = ? AND name = ? AND day >= ? "
                      "AND day <= ? GROUP BY day, value ORDER BY day, value",
                      (source, name, period.first_day, period.last_day), "reading counters")
    return [(int(d), v, int(n)) for d, v, n in rows]


def builds(store: Store, period: Period) -> list[Count]:
    """Records per build, in the builds' order."""
    return buildorder.order(tallies(store, RECORD_SOURCE, Field.BUILD, period), build="value")


def known_values(store: Store, name: str, period: Period, most: int = 200) -> list[str]:
    """The values of a record field seen in the period (for a filter's suggestions)."""
    return sorted(c.value for c in tallies(store, RECORD_SOURCE, name, period)[:most])


@dataclass(frozen=True)
class Population:
    build: str
    machines: int
    first_seen: int


def population(store: Store, period: Period) -> list[Population]:
    """Distinct machine ids seen on each build in the period, in the builds' order: those
    whose span of sightings overlaps it, minus those with no sighting inside it (the
    period lies within one of their gaps)."""
    # Grouped by an expression, so that SQLite reads the days' index (the period's spans
    # only) rather than the whole table in build order.
    spans = store.rows("SELECT build || '' AS b, count(*) FROM machine_spans WHERE last_day >= ? AND first_day <= ? "
                       "GROUP BY b", (period.first_day, period.last_day), "reading the population")
    gaps = dict(store.rows("SELECT build, count(*) FROM machine_gaps WHERE first_day <= ? AND last_day >= ? "
                           "GROUP BY build", (period.first_day, period.last_day), "reading the population"))
    first = dict(store.rows("SELECT value, min(first_id) FROM tallies WHERE source = ? AND name = ? GROUP BY value",
                            (RECORD_SOURCE, Field.BUILD), "reading the population"))
    out = [Population(b, int(n) - int(gaps.get(b, 0)), int(first.get(b, 0))) for b, n in spans]
    return buildorder.order([p for p in out if p.machines > 0])


# --- crash groups ------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildCount:
    build: str
    records: int
    first_seen: int = 0


@dataclass(frozen=True)
class CrashGroup:
    function: str
    module: str
    records: int
    machines: int
    first_seen: int  # reception time
    last_seen: int
    example_id: int
    builds: list[BuildCount]
    example: list[str]  # the example's crashing thread (or oops reason and frames)
    program: str

    domain: Domain = Domain.CRASH

    def label(self) -> str:
        """As the reports print the frame: ``abort() - [/usr/lib64/libc.so.6]``."""
        if not self.module:
            return self.function
        name = self.function
        if self.domain is Domain.CRASH and self.markable and "(" not in name:
            name += "()"
        return f"{name} - [{self.module}]"

    @property
    def markable(self) -> bool:
        """Is the guilty frame a function the never-guilty list could name?"""
        return bool(self.module) and not self.function.startswith((UNKNOWN_FUNCTION, "("))


@dataclass(frozen=True)
class CrashSummary:
    groups: list[CrashGroup]
    total_groups: int
    total_records: int


def crash_groups(store: Store, domain: Domain, period: Period, limit: int) -> CrashSummary:
    """The period's groups, most records first: counts summed from the records per stack and
    day, then the machines and builds of the groups shown from their records' index."""
    per_stack = store.rows(
        "SELECT d.stack_id, s.guilty_function, s.guilty_module, sum(d.records), min(d.first_seen), max(d.last_seen), "
        "max(d.last_record_id) FROM crash_days d JOIN crash_stacks s ON s.id = d.stack_id "
        "WHERE d.domain = ? AND d.day >= ? AND d.day <= ? GROUP BY d.stack_id, s.guilty_function, s.guilty_module",
        (domain.value, period.first_day, period.last_day), "reading crash groups")
    found: dict[tuple[str, str], list] = {}  # -> [records, first, last, example, stack ids]
    for stack, function, module, n, first, last, example in per_stack:
        g = found.setdefault((function, module), [0, first, last, example, []])
        g[0] += int(n)
        g[1], g[2], g[3] = min(g[1], first), max(g[2], last), max(g[3], example)
        g[4].append(int(stack))
    ranked = sorted(found.items(), key=lambda kv: (-kv[1][0], kv[0]))
    shown = ranked[:limit]
    span = (period.start, period.end)
    builds: dict[int, list[tuple[str, int]]] = {}
    stacks = [s for _, g in shown for s in g[4]]
    for chunk in (stacks[i:i + 500] for i in range(0, len(stacks), 500)):
        for stack, build, n in store.rows(
                f"SELECT stack_id, build, count(*) FROM crash_records WHERE stack_id IN ({', '.join('?' * len(chunk))}) "
                "AND ts_reception >= ? AND ts_reception < ? GROUP BY stack_id, build", (*chunk, *span),
                "reading crash groups"):
            builds.setdefault(int(stack), []).append((build, int(n)))
    examples = {r.id: r for r in store.records_by_id([int(g[3]) for _, g in shown])}
    parse = crashes if domain is Domain.CRASH else oopses
    groups = []
    for (function, module), (n, first, last, example_id, ids) in shown:
        machines = store.rows(
            f"SELECT count(DISTINCT machine_id) FROM crash_records WHERE stack_id IN ({', '.join('?' * len(ids))}) "
            "AND ts_reception >= ? AND ts_reception < ?", (*ids, *span), "reading crash groups")[0][0]
        per_build: dict[str, int] = {}
        for stack in ids:
            for build, count in builds.get(stack, []):
                per_build[build] = per_build.get(build, 0) + count
        example = examples.get(int(example_id))
        payload = example.record.payload if example is not None else ""
        groups.append(CrashGroup(
            function=function, module=module, records=n, machines=int(machines), first_seen=int(first),
            last_seen=int(last), example_id=int(example_id),
            builds=buildorder.order([BuildCount(b, c) for b, c in per_build.items()]),
            example=parse.display_lines(payload),
            program=crashes.crashing_thread(payload)[0] if domain is Domain.CRASH else "", domain=domain,
        ))
    return CrashSummary(groups, len(ranked), sum(g[0] for _, g in ranked))


def never_guilty_list(store: Store, domain: Domain) -> tuple[NeverGuilty, bool]:
    """The list in force and whether it is the shipped default."""
    stored = never_guilty(store, domain)
    return (default_list(domain), True) if stored is None else (stored, False)
