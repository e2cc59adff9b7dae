"""The web views' pure parts: build order, periods, the Records filters and their SQL (held
against the same filter in Python, on a real SQLite store filled through the ingest hook),
inert text, and charts."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from views_dataset import record, store_records

from telemetry_collector.dburl import parse_database_url
from telemetry_collector.store import open_store
from telemetry_collector.views import buildorder, reads
from telemetry_collector.views.charts import Point, bar_chart, column_chart
from telemetry_collector.views.periods import Period, PeriodError, parse_period
from telemetry_collector.views.recordfilter import (
    FilterError,
    RecordFilter,
    matches,
    parse_record_filter,
    parse_time,
    to_params,
    where,
)
from telemetry_collector.views.safetext import hidden, visible
from telemetry_collector.views.site import query

DAY = 86400
NOW = 20_000 * DAY + 3600  # 2024-10-04 01:00 UTC


# --- builds --------------------------------------------------------------------------------

def test_build_order():
    rows = [reads.Count(b, 1, first) for b, first in
            [("bookworm", 5), ("10", 9), ("9", 8), ("12.10", 1), ("12.4", 2), ("2024-05-rc1", 3), ("41000", 4),
             ("trixie", 1)]]
    assert [r.value for r in buildorder.order(rows)] == [
        "9", "10", "12.4", "12.10", "41000", "trixie", "2024-05-rc1", "bookworm"]


@given(st.lists(st.tuples(st.one_of(st.from_regex(r"\d{1,6}(\.\d{1,3}){0,2}", fullmatch=True),
                                    st.text(min_size=1, max_size=8)), st.integers(0, 100)), max_size=30,
                unique_by=lambda pair: pair[0]))
def test_build_order_properties(pairs):
    rows = [reads.Count(b, 1, f) for b, f in pairs]
    ordered = buildorder.order(rows)
    assert sorted(map(repr, ordered)) == sorted(map(repr, rows))  # a permutation
    versions = [r for r in ordered if buildorder.version_key(r.value) is not None]
    others = [r for r in ordered if buildorder.version_key(r.value) is None]
    assert ordered == versions + others  # versions first
    keys = [buildorder.version_key(r.value) for r in versions]
    assert keys == sorted(keys)  # numerically
    assert [r.first_seen for r in others] == sorted(r.first_seen for r in others)  # by appearance
    assert buildorder.order(list(reversed(rows))) == ordered  # a total order: the input's order does not matter


# --- periods ---------------------------------------------------------------------------------

def test_periods():
    today = NOW // DAY
    assert parse_period({}, NOW, 7) == Period(today - 6, today)
    assert parse_period({"days": "1"}, NOW, 7) == Period(today, today)
    assert parse_period({"from": "2024-10-01", "to": "2024-10-02"}, NOW, 7) == Period(19997, 19998)
    assert parse_period({"to": "2024-10-02"}, NOW, 3) == Period(19996, 19998)
    assert parse_period({"from": "2024-10-01"}, NOW, 3) == Period(19997, today)
    p = Period(19997, 19998)
    assert (p.start, p.end, p.days) == (19997 * DAY, 19999 * DAY, 2)
    assert p.label() == "2024-10-01 to 2024-10-02 (2 days, UTC)"
    for bad in ({"days": "0"}, {"days": "x"}, {"days": "99999"}, {"from": "2024-13-01"},
                {"from": "2024-10-03", "to": "2024-10-01"}, {"from": "1900-01-01", "to": "2024-01-01"}):
        with pytest.raises(PeriodError):
            parse_period(bad, NOW, 7)


# --- the Records filters ------------------------------------------------------------------------

def test_filter_parameters():
    f = parse_record_filter({"classification": "org.clearlinux/crash/*", "severity": "3", "build": " 41000 ",
                             "machine_id": "", "from": "2024-10-01", "to": "2024-10-01T12:30", "limit": "100",
                             "before": "77", "unknown": "x"})
    assert f == RecordFilter(classification="org.clearlinux/crash/*", severity=3, build="41000",
                             received_from=19997 * DAY, received_until=19997 * DAY + 12 * 3600 + 31 * 60,
                             before=77, limit=100)
    assert f.prefix == "org.clearlinux/crash/" and f.narrowed and not RecordFilter(before=5).narrowed
    assert parse_record_filter(to_params(f)) == f  # links give the filter back
    assert parse_time("2024-10-01T12:30:15", "to", end=True) == 19997 * DAY + 12 * 3600 + 30 * 60 + 16
    assert parse_time("2024-10-01T12:30+02:00", "from", end=False) == 19997 * DAY + 10 * 3600 + 30 * 60
    for bad, message in (({"severity": "5"}, "severity"), ({"limit": "5"}, "limit"), ({"before": "-1"}, "before"),
                         ({"classification": "a/*/c"}, "prefix"), ({"from": "yesterday"}, "from"),
                         ({"machine_id": "m" * 33}, "machine_id"), ({"group": "crash"}, "group"),
                         ({"group": "user:f"}, "group"), ({"build": "a\x1bb"}, "build")):
        with pytest.raises(FilterError, match=message):
            parse_record_filter(bad)


def test_where_is_one_condition():
    assert where(RecordFilter()) == ("1 = 1", [])
    sql, params = where(RecordFilter(classification="a_b/%/*", severity=2))
    assert sql == "classification LIKE ? ESCAPE '\\' AND severity = ?" and params == ["a\\_b/\\%/%", 2]
    assert where(RecordFilter(classification="a/*"), by_id=True)[0] == "classification || '' LIKE ? ESCAPE '\\'"


CLASSES = ["org.clearlinux/hello/world", "org.clearlinux/crash/clr", "org.clearlinux/crash/error", "a_b/%x/y"]
STORED = [record(CLASSES[i % 4], "p", received=NOW - (400 - i) * 997, machine=f"m{i % 7}", build=str(40 + i % 5),
                 severity=1 + i % 4, arch=("x86_64", "aarch64")[i % 2]) for i in range(400)]


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('views')}/records.db"
    assert store_records(url, STORED, batch=37) == len(STORED)
    store = open_store(parse_database_url(url))
    yield store
    store.close()


times = st.one_of(st.none(), st.integers(NOW - 420 * 997, NOW + 10))
filters = st.builds(
    RecordFilter,
    classification=st.one_of(st.none(), st.sampled_from([*CLASSES, "org.clearlinux/crash/*", "a_b/*", "none/x/y"])),
    severity=st.one_of(st.none(), st.integers(1, 4)),
    build=st.one_of(st.none(), st.sampled_from(["40", "42", "44", "99"])),
    machine_id=st.one_of(st.none(), st.sampled_from(["m0", "m3", "m9"])),
    arch=st.one_of(st.none(), st.sampled_from(["x86_64", "aarch64"])),
    received_from=times, received_until=times,
    limit=st.integers(10, 60),
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filters)
def test_records_view_selects_what_the_filter_says(filled, f):
    """Every page, newest first, following the Older links, then back with the Newer links."""
    expected = [i + 1 for i in reversed(range(len(STORED))) if matches(f, i + 1, STORED[i])]
    seen, pages = [], []
    page = reads.record_page(filled, f)
    while True:
        assert len(page.rows) <= f.limit
        pages.append([r.id for r in page.rows])
        seen += pages[-1]
        if page.older is None:
            break
        page = reads.record_page(filled, f.page(before=page.older))
    assert seen == expected
    for i in range(len(pages) - 1, 0, -1):  # and back again
        newer = reads.record_page(filled, f.page(after=pages[i][0]))
        assert [r.id for r in newer.rows] == pages[i - 1][-f.limit:]


def test_a_time_range_reads_along_the_ids(filled):
    f = RecordFilter(received_from=NOW - 100 * 997, received_until=NOW - 50 * 997)
    ids = reads.id_range(filled, f.received_from, f.received_until)
    assert ids is not None and ids.last - ids.first < 120  # the hours around it, not the table
    plan = " ".join(str(r) for r in filled.rows("EXPLAIN QUERY PLAN SELECT id FROM records WHERE "
                                                + where(f, ids)[0] + " ORDER BY id DESC LIMIT 5", where(f, ids)[1]))
    assert "records_reception" not in plan and "TEMP B-TREE" not in plan


# --- inert text ------------------------------------------------------------------------------

def test_visible():
    shown = str(visible("<script>alert(1)</script>\x1b[31m\u202eok\t\n&\x00\x7f"))
    assert "<script>" not in shown and "&lt;script&gt;" in shown
    assert '<span class="ctl" title="U+001B">\\x1b</span>[31m' in shown
    assert '<span class="ctl" title="U+202E">\\u202e</span>' in shown
    assert "\t\n&amp;" in shown and "\\x00" in shown and "\\x7f" in shown


@given(st.text(max_size=200))
def test_visible_hides_nothing(text):
    shown = str(visible(text))
    without_spans = re.sub(r'<span class="ctl" title="U\+[0-9A-F]+">\\[xuU][0-9a-f]+</span>', "", shown)
    assert "<" not in without_spans and ">" not in without_spans
    assert not any(hidden(ch) for ch in without_spans)
    # every character is there, escaped or by its code
    restored = re.sub(r'<span class="ctl" title="U\+([0-9A-F]+)">\\[xuU][0-9a-f]+</span>',
                      lambda m: chr(int(m.group(1), 16)), shown)
    assert html.unescape(restored) == text


# --- charts ----------------------------------------------------------------------------------

@given(st.lists(st.builds(Point, st.text(max_size=40), st.integers(0, 10**9)), max_size=40))
def test_charts_are_wellformed_and_escaped(points):
    for chart in (column_chart(points, title="t<x>", table_id="t&id"), bar_chart(points, title="t", table_id="i")):
        text = str(chart)
        if not points:
            assert "Nothing to chart" in text
            continue
        root = ET.fromstring(text.replace("&nbsp;", " "))  # well-formed XML, so nothing escaped its text
        assert root.tag.endswith("svg")
        assert len([e for e in root.iter() if e.tag.endswith("rect")]) == len(points)


def test_chart_values():
    text = str(column_chart([Point("41000", 5), Point("41010", 10)], title="Builds", table_id="b"))
    assert "<title>41000: 5</title>" in text and "<title>41010: 10</title>" in text
    bars = str(bar_chart([Point("a", 3), Point("b", 1)], title="x", table_id="y"))
    assert "3 · 75.0%" in bars and "1 · 25.0%" in bars


def test_query_links():
    assert query({"a": "1", "b": ""}, c=2, a=None) == "?c=2"
    assert query({}) == ""
    assert query({"classification": "org.clearlinux/crash/*"}) == "?classification=org.clearlinux%2Fcrash%2F%2A"
