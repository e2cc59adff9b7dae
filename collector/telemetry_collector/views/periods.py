"""The period a view covers, from its query parameters (pure).

``?days=N`` (the last N UTC days, today included) or ``?from=YYYY-MM-DD&to=YYYY-MM-DD``
(whole UTC days, both included; either may be left out).  Counters are kept per UTC day,
so a period is whole days; the page says which.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass

from telemetry.errors import TelemetryError

DAY = 86400
MAX_DAYS = 3660
CHOICES = (1, 3, 7, 14, 30, 90, 365)


class PeriodError(TelemetryError):
    pass


@dataclass(frozen=True)
class Period:
    first_day: int  # days since 1970-01-01, UTC
    last_day: int  # included

    @property
    def days(self) -> int:
        return self.last_day - self.first_day + 1

    @property
    def start(self) -> int:
        return self.first_day * DAY

    @property
    def end(self) -> int:
        """The first second after the period."""
        return (self.last_day + 1) * DAY

    def label(self) -> str:
        first, last = date_text(self.first_day), date_text(self.last_day)
        span = f"{self.days} day{'s' if self.days != 1 else ''}"
        return f"{first} (UTC day)" if first == last else f"{first} to {last} ({span}, UTC)"


def date_text(day: int) -> str:
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()


def parse_date(text: str, what: str) -> int:
    try:
        date = datetime.date.fromisoformat(text.strip())
    except ValueError:
        raise PeriodError(f"{what} {text[:40]!r} is not a date (YYYY-MM-DD)") from None
    return (date - datetime.date(1970, 1, 1)).days


def parse_period(params: Mapping[str, str], now: int, default_days: int) -> Period:
    today = now // DAY
    start = params.get("from", "").strip()
    end = params.get("to", "").strip()
    if start or end:
        last = parse_date(end, "to") if end else today
        first = parse_date(start, "from") if start else last - default_days + 1
        if first > last:
            raise PeriodError("the period starts after it ends (from is later than to)")
        if last - first + 1 > MAX_DAYS:
            raise PeriodError(f"the period is longer than {MAX_DAYS} days")
        return Period(first, last)
    text = params.get("days", "").strip()
    if not text:
        return Period(today - default_days + 1, today)
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text[:6]) <= MAX_DAYS:
        raise PeriodError(f"days must be a whole number of days, 1 to {MAX_DAYS}")
    days = int(text)
    return Period(today - days + 1, today)
