"""Machine check exceptions: an example payload parser and plugin view, as a third party
would write them (`derive.parsers`, `views.plugin`), for the records a telemetry-enabled
mcelog sends (``org.clearlinux/mce/*``: corrected, SRAO, SRAR, UCNA, thermal).

The payload is mcelog's report of one event::

    Hardware event. This is not a software error.
    CPU 2 BANK 7
    MCA: MEMORY CONTROLLER RD_CHANNEL1_ERR
    STATUS 8c00004000010091 MCGSTATUS 0
    MCGCAP 1000c14 APICID 4 SOCKETID 0

The parser counts, per day: the kind (the classification's last part), the bank, the
status, the MCA error, the socket and the machine.  The view shows them for a period, as
the reference backend's MCE view did, from those counts alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from telemetry_collector.derive.parsers import Fact
from telemetry_collector.derive.stacks import Stack
from telemetry_collector.model import NewRecord
from telemetry_collector.views.charts import Point
from telemetry_collector.views.periods import date_text
from telemetry_collector.views.plugin import Page, PluginView, ViewData, ViewRequest

CLASSIFICATION_PREFIX = "org.clearlinux/mce/"
BANK = re.compile(r"^CPU (\d+) BANK (\d+)\b", re.MULTILINE)
STATUS = re.compile(r"^STATUS ([0-9a-fA-F]{1,16}) MCGSTATUS\b", re.MULTILINE)
MCA = re.compile(r"^MCA: (.{1,120})$", re.MULTILINE)
SOCKET = re.compile(r"\bSOCKETID (\d+)\b")
SCAN_MAX = 16 * 1024
TOP = 10


class MceParser:
    name = "mce"
    classifications = (CLASSIFICATION_PREFIX + "*",)

    def parse(self, record: NewRecord) -> Iterator[Fact | Stack]:
        text = record.payload[:SCAN_MAX]
        yield Fact("kind", record.classification[len(CLASSIFICATION_PREFIX):])
        yield Fact("machine", record.machine_id)
        if m := BANK.search(text):
            yield Fact("bank", m.group(2))
        if m := STATUS.search(text):
            yield Fact("status", "0x" + m.group(1).lower().rjust(16, "0"))
        if m := MCA.search(text):
            yield Fact("error", m.group(1).strip())
        if m := SOCKET.search(text):
            yield Fact("socket", m.group(1))


PARSER = MceParser()


async def render(request: ViewRequest) -> Page:
    period = request.period

    def read(data: ViewData) -> dict[str, object]:
        per_day: dict[int, int] = {}
        for day, _, n in data.tallies_by_day("mce", "kind", period):
            per_day[day] = per_day.get(day, 0) + n
        return {
            "kinds": data.tallies("mce", "kind", period),
            "banks": data.tallies("mce", "bank", period),
            "statuses": data.tallies("mce", "status", period)[:TOP],
            "errors": data.tallies("mce", "error", period)[:TOP],
            "machines": data.tallies("mce", "machine", period)[:TOP],
            "days": [Point(date_text(day), per_day.get(day, 0)) for day in range(period.first_day, period.last_day + 1)],
        }

    values = await request.read(read)
    kinds = values["kinds"]
    return Page("mce.html", {**values, "total": sum(c.records for c in kinds)})  # type: ignore[attr-defined]


VIEW = PluginView(
    slug="mce", title="MCE", render=render, templates="telemetry_collector.plugins",
    description="Machine check exceptions from mcelog: per day, kind, bank, status, error and machine.",
)
