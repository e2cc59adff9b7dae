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
    hours: dict[int, HourSpan] = {}
    tallies: dict[tuple[str, str, int, str], Tally] = {}

    def tally(key: tuple[str, str, int, str], record_id: int) -> None:
        old = tallies.get(key)
        tallies[key] = Tally(1, record_id) if old is None else Tally(old.records + 1, min(old.first_id, record_id))

    seen: dict[tuple[str, str], set[int]] = {}
    for s in records:
        r = s.record
        hour = r.ts_reception // HOUR
        span = hours.get(hour)
        hours[hour] = (HourSpan(s.id, s.id, 1) if span is None else
                       HourSpan(min(span.first_id, s.id), max(span.last_id, s.id), span.records + 1))
        day = day_of(r.ts_reception)
        tally((RECORD_SOURCE, Field.BUILD, day, r.build), s.id)
        tally((RECORD_SOURCE, Field.CLASSIFICATION, day, r.classification), s.id)
        tally((RECORD_SOURCE, Field.PLATFORM, day, r.host_type), s.id)
        seen.setdefault((r.build, r.machine_id), set()).add(day)

    stacks: dict[str, Stack] = {}
    crashes: list[CrashRow] = []
    for p in parsed:
        r = p.record.record
        day = day_of(r.ts_reception)
        stacked = False
        for item in p.items:
            if isinstance(item, Fact):
                tally((p.source, item.name, day, item.value), p.record.id)
            elif not stacked:  # one stack per record: its crashing thread
                stacked = True
                signature = item.signature()
                stacks.setdefault(signature, item)
                crashes.append(CrashRow(p.record.id, item.domain, signature, r.ts_reception, r.machine_id, r.build))

    rounds: list[dict[tuple[str, str], int]] = []
    for key in sorted(seen):
        for i, day in enumerate(sorted(seen[key])):
            if i == len(rounds):
                rounds.append({})
            rounds[i][key] = day
    return Deltas(
        hours=dict(sorted(hours.items())),
        tallies=dict(sorted(tallies.items())),
        sightings=rounds,
        stacks=stacks,
        crashes=sorted(crashes, key=lambda c: c.record_id),
    )


def gap_after(previous_last_day: int | None, day: int) -> tuple[int, int] | None:
    """The days without a sighting between a machine's last one and this one, if any."""
    if previous_last_day is None or day <= previous_last_day + 1:
        return None
    return previous_last_day + 1, day - 1
