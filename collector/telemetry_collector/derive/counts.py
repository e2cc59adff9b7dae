"""What one stored batch adds to the views' counters (pure).

Days and hours are UTC, counted from the collector's reception time, so every worker puts
a record in the same bucket.  Deltas are summed per key here, because one statement may
touch a row only once (PostgreSQL's ON CONFLICT) and because one row per key and batch is
the least the database has to write; keys come out sorted, so concurrent workers lock rows
in the same order and never deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..model import StoredRecord
from .parsers import Fact
from .stacks import Domain, Stack

DAY = 86400
HOUR = 3600
RECORD_SOURCE = "record"  # tallies of the record's own fields; a parser's facts use its name


class Field:
    """The record fields counted per day (tallies with source "record")."""

    BUILD = "build"
    CLASSIFICATION = "classification"
    PLATFORM = "platform"  # host_type: sys_vendor|product_name|product_version


def day_of(ts: int) -> int:
    return ts // DAY


@dataclass(frozen=True)
class HourSpan:
    first_id: int
    last_id: int
    records: int


@dataclass(frozen=True)
class Tally:
    records: int
    first_id: int


@dataclass(frozen=True)
class CrashRow:
    record_id: int
    domain: Domain
    signature: str
    ts_reception: int
    machine_id: str
    build: str


@dataclass
class Parsed:
    """One record's parser output, gathered by the hook."""

    record: StoredRecord
    source: str
    items: list[Fact | Stack] = field(default_factory=list)


@dataclass(frozen=True)
class Deltas:
    hours: dict[int, HourSpan]
    tallies: dict[tuple[str, str, int, str], Tally]  # (source, name, day, value)
    sightings: list[dict[tuple[str, str], int]]  # rounds of (build, machine_id) -> day, days ascending
    stacks: dict[str, Stack]  # by signature
    crashes: list[CrashRow]


def count(records: Sequence[StoredRecord], parsed: Iterable[Parsed] = ()) -> Deltas:
    # Plain lists while counting (this runs for every batch, in the writer's transaction).
    hours: dict[int, list[int]] = {}  # hour -> [first_id, last_id, records]
    tallies: dict[tuple[str, str, int, str], list[int]] = {}  # key -> [records, first_id]
    seen: dict[tuple[str, str], set[int]] = {}

    def tally(key: tuple[str, str, int, str], record_id: int) -> None:
        t = tallies.get(key)
        if t is None:
            tallies[key] = [1, record_id]
        else:
            t[0] += 1
            if record_id < t[1]:
                t[1] = record_id

    for s in records:
        r = s.record
        rid = s.id
        span = hours.get(r.ts_reception // HOUR)
        if span is None:
            hours[r.ts_reception // HOUR] = [rid, rid, 1]
        else:
            span[0] = min(span[0], rid)
            span[1] = max(span[1], rid)
            span[2] += 1
        day = r.ts_reception // DAY
        tally((RECORD_SOURCE, Field.BUILD, day, r.build), rid)
        tally((RECORD_SOURCE, Field.CLASSIFICATION, day, r.classification), rid)
        tally((RECORD_SOURCE, Field.PLATFORM, day, r.host_type), rid)
        days = seen.get((r.build, r.machine_id))
        if days is None:
            seen[(r.build, r.machine_id)] = {day}
        else:
            days.add(day)

    stacks: dict[str, Stack] = {}
    crashes: list[CrashRow] = []
    for p in parsed:
        r = p.record.record
        day = r.ts_reception // DAY
        stacked = False
        for item in p.items:
            if isinstance(item, Fact):
                tally((p.source, item.name, day, item.value), p.record.id)
            elif not stacked:  # one stack per record: its crashing thread
                stacked = True
                signature = item.signature
                stacks.setdefault(signature, item)
                crashes.append(CrashRow(p.record.id, item.domain, signature, r.ts_reception, r.machine_id, r.build))

    rounds: list[dict[tuple[str, str], int]] = []
    for key in sorted(seen):
        for i, day in enumerate(sorted(seen[key])):
            if i == len(rounds):
                rounds.append({})
            rounds[i][key] = day
    return Deltas(
        hours={h: HourSpan(*v) for h, v in sorted(hours.items())},
        tallies={k: Tally(*v) for k, v in sorted(tallies.items())},
        sightings=rounds,
        stacks=stacks,
        crashes=sorted(crashes, key=lambda c: c.record_id),
    )


def gap_after(previous_last_day: int | None, day: int) -> tuple[int, int] | None:
    """The days without a sighting between a machine's last one and this one, if any."""
    if previous_last_day is None or day <= previous_last_day + 1:
        return None
    return previous_last_day + 1, day - 1
