"""The Records view's filters: query parameters to a `RecordFilter`, and that to SQL (pure).

Parameters (empty means unset, as a submitted form leaves them):

    classification   exact, or a prefix ending in ``*`` (``org.clearlinux/crash/*``)
    severity         1 to 4
    build, machine_id, arch
    from, to         reception time, UTC: ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS]``; both
                     included at the precision given (``to=2024-05-01`` is the whole day)
    group            a crash group, ``DOMAIN:FUNCTION`` plus ``module`` (from the Crashes and
                     Kernel views)
    before, after    paging cursors: records older than id ``before`` / newer than ``after``
    limit            rows per page, 10 to 500 (50)

`where` turns a filter into one SQL condition with ``?`` placeholders; `matches` says the
same thing in Python (the tests hold one against the other).  A time range also becomes
an id range, from the ids stored per reception hour, so the page is read along the primary
key, newest first, and stops after one page however far back the range lies.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from telemetry.errors import TelemetryError

from ..derive.stacks import Domain
from ..model import NewRecord
from ..rules import MACHINE_ID_MAX, SEVERITY_RANGE

LIMIT_DEFAULT = 50
LIMIT_RANGE = range(10, 501)
TEXT_MAX = 256
ID_MAX = 2**63 - 1
TS_MAX = 253402300799  # 9999-12-31 23:59:59


class FilterError(TelemetryError):
    pass


@dataclass(frozen=True)
class GroupKey:
    domain: Domain
    function: str
    module: str


@dataclass(frozen=True)
class RecordFilter:
    classification: str | None = None
    severity: int | None = None
    build: str | None = None
    machine_id: str | None = None
    arch: str | None = None
    received_from: int | None = None  # ts_reception >= this
    received_until: int | None = None  # ts_reception < this
    group: GroupKey | None = None
    before: int | None = None
    after: int | None = None
    limit: int = LIMIT_DEFAULT

    @property
    def prefix(self) -> str | None:
        """The classification prefix of a ``…*`` filter."""
        c = self.classification
        return c[:-1] if c is not None and c.endswith("*") else None

    def page(self, *, before: int | None = None, after: int | None = None) -> RecordFilter:
        return replace(self, before=before, after=after)

    @property
    def narrowed(self) -> bool:
        """Does anything but paging restrict the records?"""
        return any(getattr(self, f.name) is not None for f in fields(self)
                   if f.name not in ("before", "after", "limit"))


def _text(params: Mapping[str, str], name: str, limit: int = TEXT_MAX) -> str | None:
    value = params.get(name, "").strip()
    if not value:
        return None
    if len(value) > limit or not value.isprintable():
        raise FilterError(f"{name} must be at most {limit} printable characters")
    return value


def _id(params: Mapping[str, str], name: str) -> int | None:
    value = params.get(name, "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()):
        raise FilterError(f"{name} must be a record id (digits)")
    return min(int(value[:19]), ID_MAX)


def parse_time(text: str, name: str, *, end: bool) -> int:
    """Seconds since the epoch (UTC); with `end`, the first second after the time given
    at the precision given."""
    text = text.strip().replace(" ", "T")
    try:
        if "T" in text:
            moment = datetime.datetime.fromisoformat(text)
            if moment.tzinfo is not None:
                moment = moment.astimezone(datetime.UTC).replace(tzinfo=None)
            step = 1 if moment.second or text.count(":") >= 2 else 60
        else:
            moment = datetime.datetime.combine(datetime.date.fromisoformat(text), datetime.time())
            step = 86400
    except ValueError:
        raise FilterError(f"{name} {text[:40]!r} is not a time (YYYY-MM-DD or YYYY-MM-DDTHH:MM, UTC)") from None
    ts = int(moment.replace(tzinfo=datetime.UTC).timestamp())
    return min(max(ts + (step if end else 0), 0), TS_MAX)


def parse_record_filter(params: Mapping[str, str]) -> RecordFilter:
    classification = _text(params, "classification")
    if classification is not None and "*" in classification[:-1]:
        raise FilterError("classification: '*' may only end a prefix (org.clearlinux/crash/*)")
    severity = None
    if (text := params.get("severity", "").strip()):
        if not (text.isascii() and text.isdigit()) or int(text[:3]) not in SEVERITY_RANGE:
            raise FilterError("severity must be 1 to 4")
        severity = int(text)
    machine_id = _text(params, "machine_id", MACHINE_ID_MAX)
    received_from = received_until = None
    if (text := params.get("from", "").strip()):
        received_from = parse_time(text, "from", end=False)
    if (text := params.get("to", "").strip()):
        received_until = parse_time(text, "to", end=True)
    group = None
    if (wanted := _text(params, "group")) is not None:
        domain, colon, function = wanted.partition(":")
        try:
            group = GroupKey(Domain(domain), function, params.get("module", "").strip())
        except ValueError:
            group = None
        if not colon or group is None or not function:
            raise FilterError("group must be crash:FUNCTION or kernel:FUNCTION (with module=MODULE)")
    limit = LIMIT_DEFAULT
    if (text := params.get("limit", "").strip()):
        if not (text.isascii() and text.isdigit()) or int(text[:4]) not in LIMIT_RANGE:
            raise FilterError(f"limit must be {LIMIT_RANGE.start} to {LIMIT_RANGE.stop - 1}")
        limit = int(text)
    return RecordFilter(
        classification=classification, severity=severity, build=_text(params, "build"),
        machine_id=machine_id, arch=_text(params, "arch", 32), received_from=received_from,
        received_until=received_until, group=group, before=_id(params, "before"), after=_id(params, "after"),
        limit=limit,
    )


def to_params(f: RecordFilter) -> dict[str, str]:
    """The query parameters that give `f` back (for links: paging, bookmarks)."""
    out: dict[str, str] = {}
    for name, value in (("classification", f.classification), ("severity", f.severity), ("build", f.build),
                        ("machine_id", f.machine_id), ("arch", f.arch)):
        if value is not None:
            out[name] = str(value)
    if f.received_from is not None:
        out["from"] = time_text(f.received_from)
    if f.received_until is not None:
        out["to"] = time_text(f.received_until - 1)
    if f.group is not None:
        out["group"] = f"{f.group.domain.value}:{f.group.function}"
        out["module"] = f.group.module
    if f.before is not None:
        out["before"] = str(f.before)
    if f.after is not None:
        out["after"] = str(f.after)
    if f.limit != LIMIT_DEFAULT:
        out["limit"] = str(f.limit)
    return out


def time_text(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True)
class IdRange:
    """Ids of the records received in the filter's time range lie in [first, last]."""

    first: int
    last: int


def where(f: RecordFilter, ids: IdRange | None = None, *, by_id: bool = False) -> tuple[str, list[object]]:
    """One condition (never empty) and its parameters.  The time range is tested on
    ``+ts_reception`` so that SQLite walks the id (or a filter's index) instead of the
    reception index, then sorts.  With `by_id`, a classification prefix is tested without
    its index too: when the prefix matches many records, walking the ids newest first
    finds a page sooner than sorting them all."""
    clauses: list[str] = []
    params: list[object] = []

    def add(sql: str, *values: object) -> None:
        clauses.append(sql)
        params.extend(values)

    if f.prefix is not None:
        column = "classification || ''" if by_id else "classification"  # the concatenation hides the index
        add(f"{column} LIKE ? ESCAPE '\\'", like_prefix(f.prefix))
    elif f.classification is not None:
        add("classification = ?", f.classification)
    for column in ("severity", "build", "machine_id", "arch"):
        value = getattr(f, column)
        if value is not None:
            add(f"{column} = ?", value)
    if f.received_from is not None:
        add("+ts_reception >= ?", f.received_from)
    if f.received_until is not None:
        add("+ts_reception < ?", f.received_until)
    if ids is not None:
        add("id BETWEEN ? AND ?", ids.first, ids.last)
    if f.group is not None:
        add("id IN (SELECT c.record_id FROM crash_records c JOIN crash_stacks s ON s.id = c.stack_id "
            "WHERE s.domain = ? AND s.guilty_function = ? AND s.guilty_module = ?)",
            f.group.domain.value, f.group.function, f.group.module)
    if f.before is not None:
        add("id < ?", f.before)
    if f.after is not None:
        add("id > ?", f.after)
    return (" AND ".join(clauses) or "1 = 1"), params


def matches(f: RecordFilter, record_id: int, r: NewRecord) -> bool:
    """`where` in Python, for records without a crash group (the tests' oracle)."""
    if f.prefix is not None and not r.classification.startswith(f.prefix):
        return False
    if f.prefix is None and f.classification is not None and r.classification != f.classification:
        return False
    for column in ("severity", "build", "machine_id", "arch"):
        value = getattr(f, column)
        if value is not None and getattr(r, column) != value:
            return False
    if f.received_from is not None and r.ts_reception < f.received_from:
        return False
    if f.received_until is not None and r.ts_reception >= f.received_until:
        return False
    if f.before is not None and record_id >= f.before:
        return False
    return f.after is None or record_id > f.after
