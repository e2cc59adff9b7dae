"""Retention: which records to delete, as the reference backend's daily purge decides (pure).

A policy has the age after which records are deleted (`unfiltered_days`, the backend's
MAX_DAYS_KEEP_UNFILTERED_RECORDS, 35 by default; 0 keeps them) and filters, each
``FIELD=VALUE:DAYS`` (the backend's PURGE_FILTERED_RECORDS): records matching a filter are
kept DAYS days instead (0: forever) and never fall under the unfiltered age.  FIELD is
severity, classification (``*`` matches any run of characters) or machine_id.  Ages count
from the time the collector received the record.

`purge_statements` turns a policy into SQL with ``?`` placeholders; the store runs them in
one transaction.  Unlike the reference, ``%`` and ``_`` in a classification are literal.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from telemetry.errors import TelemetryError

from .query import DAY
from .rules import SEVERITY_RANGE, parse_number

DEFAULT_DAYS = 35
MAX_DAYS = 1_000_000


class PurgeSpecError(TelemetryError):
    pass


class PurgeField(enum.Enum):
    SEVERITY = "severity"
    CLASSIFICATION = "classification"
    MACHINE_ID = "machine_id"


@dataclass(frozen=True)
class PurgeFilter:
    field: PurgeField
    value: str
    days: int

    def predicate(self) -> tuple[str, tuple[object, ...]]:
        if self.field is PurgeField.SEVERITY:
            return "severity = ?", (int(self.value),)
        if self.field is PurgeField.MACHINE_ID:
            return "machine_id = ?", (self.value,)
        return "classification LIKE ? ESCAPE '\\'", (like_pattern(self.value),)


@dataclass(frozen=True)
class PurgePolicy:
    unfiltered_days: int = DEFAULT_DAYS
    filters: tuple[PurgeFilter, ...] = ()

    @property
    def active(self) -> bool:
        return self.unfiltered_days > 0 or any(f.days > 0 for f in self.filters)


def like_pattern(glob: str) -> str:
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def check_days(days: int, what: str = "days") -> int:
    if not 0 <= days <= MAX_DAYS:
        raise PurgeSpecError(f"{what} must be 0..{MAX_DAYS}, got {days}")
    return days


def parse_filter(text: str) -> PurgeFilter:
    """``FIELD=VALUE:DAYS``, e.g. ``classification=org.clearlinux/hello/*:1``."""
    usage = f"purge filter {text!r} is not FIELD=VALUE:DAYS (FIELD: severity, classification or machine_id)"
    name, eq, rest = text.partition("=")
    value, colon, days_text = rest.rpartition(":")
    if not eq or not colon:
        raise PurgeSpecError(usage)
    try:
        field = PurgeField(name.strip())
    except ValueError:
        raise PurgeSpecError(usage) from None
    days = parse_number(days_text.strip())
    if days is None:
        raise PurgeSpecError(f"purge filter {text!r}: DAYS must be a number of days (0 keeps forever)")
    check_days(days, f"purge filter {text!r}: DAYS")
    if field is PurgeField.SEVERITY and parse_number(value) not in SEVERITY_RANGE:
        raise PurgeSpecError(f"purge filter {text!r}: severity must be 1..4")
    if field is PurgeField.CLASSIFICATION and len(value.split("/")) != 3:
        raise PurgeSpecError(f"purge filter {text!r}: a classification has two '/'")
    if field is PurgeField.SEVERITY:
        value = str(int(value))
    return PurgeFilter(field, value, days)


def purge_statements(policy: PurgePolicy, now: int) -> list[tuple[str, tuple[object, ...]]]:
    """DELETE statements, in order: each filter's own age, then the unfiltered age."""
    statements = []
    for f in policy.filters:
        if f.days:
            sql, params = f.predicate()
            statements.append((f"DELETE FROM records WHERE {sql} AND ts_reception < ?", (*params, now - f.days * DAY)))
    if policy.unfiltered_days:
        clauses: list[str] = []
        values: list[object] = []
        for f in policy.filters:
            sql, p = f.predicate()
            clauses.append(f"NOT ({sql})")
            values.extend(p)
        clauses.append("ts_reception < ?")
        values.append(now - policy.unfiltered_days * DAY)
        statements.append(("DELETE FROM records WHERE " + " AND ".join(clauses), tuple(values)))
    return statements


def derived_statements(policy: PurgePolicy, now: int) -> list[tuple[str, tuple[object, ...]]]:
    """What the views keep about records (derive/), after the records themselves: crash
    rows of deleted records and the crash counts of the days they were in (counted again
    from what is left), and the counters of days older than any record the policy keeps
    (none while a filter keeps records forever)."""
    statements: list[tuple[str, tuple[object, ...]]] = [
        ("DELETE FROM crash_records WHERE NOT EXISTS (SELECT 1 FROM records WHERE records.id = crash_records.record_id)",
         ()),
    ]
    ages = [d for d in (policy.unfiltered_days, *(f.days for f in policy.filters)) if d > 0]
    if ages:
        # Every day a purge may have touched: up to the day of the most recent cut.
        touched = (now - min(ages) * DAY) // DAY + 1
        statements += [
            ("DELETE FROM crash_days WHERE day < ?", (touched,)),
            ("INSERT INTO crash_days (domain, day, stack_id, records, first_seen, last_seen, last_record_id) "
             "SELECT domain, ts_reception / 86400, stack_id, count(*), min(ts_reception), max(ts_reception), "
             "max(record_id) FROM crash_records WHERE ts_reception < ? "
             "GROUP BY domain, ts_reception / 86400, stack_id", (touched * DAY,)),
        ]
    if policy.unfiltered_days == 0 or any(f.days == 0 for f in policy.filters):
        return statements
    oldest_kept_day = (now - max([policy.unfiltered_days, *(f.days for f in policy.filters)]) * DAY) // DAY
    statements += [
        ("DELETE FROM tallies WHERE day < ?", (oldest_kept_day,)),
        ("DELETE FROM reception_hours WHERE hour < ?", (oldest_kept_day * 24,)),
        ("DELETE FROM machine_spans WHERE last_day < ?", (oldest_kept_day,)),
        ("DELETE FROM machine_gaps WHERE last_day < ?", (oldest_kept_day,)),
    ]
    return statements
