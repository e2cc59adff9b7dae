"""GET /api/records parameters and the retention policy (pure parts)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry_collector.purge import (
    PurgeField,
    PurgeFilter,
    PurgePolicy,
    PurgeSpecError,
    like_pattern,
    parse_filter,
    purge_statements,
)
from telemetry_collector.query import (
    DAY,
    INT64_MAX,
    MAX_WINDOW,
    QueryRejected,
    RecordQuery,
    parse_query,
    parse_query_string,
)


def test_defaults():
    assert parse_query({}) == RecordQuery(window=MAX_WINDOW, limit=1000)


@pytest.mark.parametrize(("name", "good", "bad", "message"), [
    ("severity", ["1", "4", "04"], ["0", "5", "x", "", "\u00b2"], "Severity should be a numeric value"),
    ("classification", ["a/b/c", "//"], ["a/b", "a/b/c/d", ""], "Classification value is invalid"),
    ("build", ["28790", "\"12\"", "b" * 199, ""], ["b" * 200, "\u00e9"], "Build value is invalid"),
    ("machine_id", ["", "m" * 32], ["m" * 33], "Machine id value is invalid"),
    ("created_in_days", ["0", "7", "99999999999999999999"], ["-1", "1.5", "", "\u00b2"],
     "Created (in days) value is invalid"),
    ("created_in_sec", ["0", "5"], ["x", "-5"], "Created (in seconds) value is invalid"),
    ("from_id", ["0", "17", "9" * 40], ["a", "-1"], "Provided record id value is invalid"),
    ("ts_capture", ["0", "1554000000"], ["x", "1e9"], "Time stamp from record capture"),
    ("limit", ["1", "2", "50", "999", "1000"], ["0", "1001", "x", "", "10000"], "Record limit value is invalid"),
])
def test_parameter_checks(name, good, bad, message):
    for value in good:
        parse_query({name: value})
    for value in bad:
        with pytest.raises(QueryRejected) as info:
            parse_query({name: value})
        assert info.value.message == message, value


def test_limit_is_compared_as_a_number():
    """The reference compared strings: 2, 50 and 999 failed while 100 passed (§11.3)."""
    assert [parse_query({"limit": v}).limit for v in ("2", "50", "999", "100")] == [2, 50, 999, 100]


def test_filters_are_carried():
    q = parse_query({"severity": "2", "classification": "a/b/c", "build": "'12'", "machine_id": "m",
                     "from_id": "5", "ts_capture": "100", "limit": "10"})
    assert (q.severity, q.classification, q.build, q.machine_id, q.from_id, q.ts_capture, q.limit) == (
        2, "a/b/c", "12", "m", 5, 100, 10)


def test_window():
    assert parse_query({"created_in_days": "2"}).window == 2 * DAY
    assert parse_query({"created_in_sec": "5"}).window == 5
    assert parse_query({"created_in_days": "1", "created_in_sec": "5"}).window == DAY
    assert parse_query({"created_in_days": "365"}).window == MAX_WINDOW
    assert parse_query({"created_in_sec": str(10**30)}).window == MAX_WINDOW
    assert parse_query({"created_in_days": "0"}).window == 0


def test_huge_numbers_are_clamped_to_what_the_database_holds():
    q = parse_query({"from_id": "9" * 40, "ts_capture": "9" * 40})
    assert q.from_id == INT64_MAX and q.ts_capture == INT64_MAX


def test_query_string():
    assert parse_query_string(b"a=1&a=2&b=%2Fx%C3%A9&c") == {"a": "1", "b": "/x\u00e9", "c": ""}
    assert parse_query_string(b"classification=org.clearlinux%2Fkernel%2Fwarning") == {
        "classification": "org.clearlinux/kernel/warning"}
    with pytest.raises(QueryRejected, match="Too many query parameters"):
        parse_query_string(b"&".join(b"k%d=1" % i for i in range(100)))


@given(st.dictionaries(st.sampled_from(["severity", "classification", "build", "machine_id", "created_in_days",
                                        "created_in_sec", "from_id", "ts_capture", "limit", "other"]),
                       st.text(max_size=30)))
def test_any_parameters_give_a_query_or_a_refusal(params):
    try:
        q = parse_query(params)
    except QueryRejected as e:
        assert e.message
        return
    assert 0 <= q.window <= MAX_WINDOW and 1 <= q.limit <= 1000
    for v in (q.from_id, q.ts_capture):
        assert v is None or 0 <= v <= INT64_MAX


@given(st.binary(max_size=300))
def test_any_query_string_parses_or_is_refused(data):
    try:
        parse_query_string(data)
    except QueryRejected:
        pass


# --- retention policy -----------------------------------------------------------------

def test_parse_filter():
    assert parse_filter("classification=org.clearlinux/mce/*:0") == PurgeFilter(
        PurgeField.CLASSIFICATION, "org.clearlinux/mce/*", 0)
    assert parse_filter("severity=04:5") == PurgeFilter(PurgeField.SEVERITY, "4", 5)
    assert parse_filter("machine_id=abc:1") == PurgeFilter(PurgeField.MACHINE_ID, "abc", 1)
    assert parse_filter("classification=a:b/c/d:2").value == "a:b/c/d"


@pytest.mark.parametrize("text", ["", "severity", "severity=1", "color=red:1", "severity=9:1", "severity=1:x",
                                  "classification=a/b:1", "machine_id=m:-1", "machine_id=m:99999999"])
def test_parse_filter_refuses(text):
    with pytest.raises(PurgeSpecError):
        parse_filter(text)


def test_like_pattern_keeps_sql_wildcards_literal():
    assert like_pattern("org/mce/*") == "org/mce/%"
    assert like_pattern("a_b%c\\d") == "a\\_b\\%c\\\\d"


def test_purge_statements_follow_the_reference():
    now = 100 * DAY
    policy = PurgePolicy(35, (parse_filter("severity=1:5"), parse_filter("classification=a/b/*:0")))
    stmts = purge_statements(policy, now)
    assert stmts[0] == ("DELETE FROM records WHERE severity = ? AND ts_reception < ?", (1, now - 5 * DAY))
    assert stmts[1][0] == ("DELETE FROM records WHERE NOT (severity = ?) AND NOT (classification LIKE ? "
                           "ESCAPE '\\') AND ts_reception < ?")
    assert stmts[1][1] == (1, "a/b/%", now - 35 * DAY)
    assert len(stmts) == 2
    assert purge_statements(PurgePolicy(0, ()), now) == []
    assert not PurgePolicy(0, (parse_filter("severity=1:0"),)).active
    assert PurgePolicy(0, (parse_filter("severity=1:3"),)).active
