"""The pure parts of telemctl: journal layout and filters, pid-file and liveness rules,
status counters and rendering, systemctl result messages, tmpfiles parsing."""

from __future__ import annotations

import dataclasses
import os
import re
import string
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry.ack import AckStatus
from telemetry.daemons.ctl import journal_view as jv
from telemetry.daemons.ctl import purge, supervise, units
from telemetry.daemons.ctl import status as status_mod
from telemetry.daemons.store.delivery import DeliveryState, LastError, Pause
from telemetry.daemons.store.journal import Counter, JournalEntry, Outcome

HEX = "0123456789abcdef"
hex32 = st.text(alphabet=HEX, min_size=32, max_size=32)
segment = st.text(alphabet=string.ascii_lowercase + string.digits + ".-_", min_size=1, max_size=20)
classification = st.builds(lambda a, b, c: f"{a}/{b}/{c}", segment, segment, segment)
uuid = st.builds(
    lambda *parts: "-".join(parts),
    *(st.text(alphabet=HEX, min_size=n, max_size=n) for n in (8, 4, 4, 4, 12)),
)


def entry(**kw) -> JournalEntry:
    values = dict(
        record_id="a19a0d41ba16788881e274b19b8a1be4", timestamp=1522691281.0,
        classification="org.clearlinux/hello/world", event_id="5de9de8d5f3c6a7d445d75ba01cc3322",
        boot_id="60c014cd-4693-40f1-b334-548cd932949b", outcome=Outcome.DELIVERED,
    )
    values.update(kw)
    return JournalEntry(**values)


# --- journal layout -------------------------------------------------------------------------

def test_journal_line_is_the_originals():
    # The example of spec/config-and-cli.md section 6, in UTC.
    line = jv.format_line(entry(), localtime=time.gmtime)
    assert line == (
        "org.clearlinux/hello/world     Mon 2018-04-02 17:48:01 GMT a19a0d41ba16788881e274b19b8a1be4 "
        "5de9de8d5f3c6a7d445d75ba01cc3322 60c014cd-4693-40f1-b334-548cd932949b"
    )


def test_journal_header_keeps_the_trailing_padding():
    header = jv.format_header()
    assert header == (
        "Classification                 Time stamp                  Record ID                        "
        "Event ID                         Boot ID                             "
    )
    assert len(header) == 30 + 1 + 27 + 1 + 32 + 1 + 32 + 1 + 36
    assert jv.format_total(3) == "Total records: 3"


@given(classification, hex32, hex32, uuid, st.integers(min_value=0, max_value=2**31 - 1))
def test_journal_line_fields_in_order(cls, record_id, event_id, boot_id, ts):
    e = entry(classification=cls, record_id=record_id, event_id=event_id, boot_id=boot_id, timestamp=float(ts))
    line = jv.format_line(e, localtime=time.gmtime)
    width = max(30, len(cls))
    assert line[:width].rstrip() == cls and line[width] == " "
    assert line.endswith(f" {record_id} {event_id} {boot_id}")
    stamp = line[width + 1 : -(32 + 32 + 36 + 3)]
    assert time.strftime(jv.TIME_FORMAT, time.gmtime(ts)) == stamp


def test_journal_json_has_every_field():
    obj = jv.entry_json(entry(http_status=201, detail="ok", creation_timestamp=5), b"hello\n", include_payload=True)
    assert obj["outcome"] == "delivered" and obj["http_status"] == 201 and obj["payload"] == "hello\n"
    assert "payload" not in jv.entry_json(entry())


# --- journal filters ------------------------------------------------------------------------

@given(hex32)
def test_ids_accepted_case_insensitively(value):
    assert jv.record_id_filter(value.upper()) == value
    assert jv.event_id_filter(value) == value


@given(st.text(max_size=40).filter(lambda s: not re.fullmatch(r"\s*[0-9a-fA-F]{32}\s*", s)))
def test_malformed_ids_refused(value):
    with pytest.raises(jv.FilterError):
        jv.record_id_filter(value)


@given(uuid)
def test_boot_ids(value):
    assert jv.boot_id_filter(value.upper()) == value


@pytest.mark.parametrize("bad", ["", "60c014cd46934 0f1b334548cd932949b", "60c014cd-4693-40f1-b334", "x" * 36])
def test_malformed_boot_ids_refused(bad):
    with pytest.raises(jv.FilterError):
        jv.boot_id_filter(bad)


@given(classification)
def test_classifications_and_prefixes(cls):
    assert jv.classification_filter(cls) == cls
    first, second, _ = cls.split("/")
    assert jv.classification_filter(f"{first}/*") == f"{first}/*"
    assert jv.classification_filter(f"{first}/{second}/*") == f"{first}/{second}/*"


@pytest.mark.parametrize("bad", ["a/b", "abc", "a/b/c/d", "/*", "a/b/c/*", "a*/*", "a/\x01/c", "a/" + "b" * 41 + "/c"])
def test_bad_classifications_refused(bad):
    with pytest.raises(jv.FilterError):
        jv.classification_filter(bad)


# --- supervision rules -------------------------------------------------------------------------

@given(st.integers(min_value=1, max_value=2**31 - 1), st.sampled_from(["", "\n", " \n", "\n\n"]))
def test_pid_file_round_trip(pid, tail):
    assert supervise.parse_pid(f"{pid}{tail}".encode()) == pid


@given(st.binary(max_size=20).filter(lambda b: not b.strip().isdigit()))
def test_pid_file_junk(data):
    assert supervise.parse_pid(data) is None


def test_pid_file_limits():
    assert supervise.parse_pid(b"0") is None
    assert supervise.parse_pid(str(2**31).encode()) is None
    assert supervise.parse_pid(b"-5") is None


@pytest.mark.parametrize("argv,name,ours", [
    (["/usr/bin/python3", "-m", "telemetry.daemons.probd.main"], "telemprobd", True),
    (["/v/bin/python", "-m", "telemetry.daemons.postd.main", "-f", "/x.conf"], "telempostd", True),
    (["/usr/bin/python3", "/usr/bin/telemprobd"], "telemprobd", True),
    (["/usr/bin/telempostd"], "telempostd", True),
    (["/usr/bin/python3", "-m", "telemetry.daemons.probd.main"], "telempostd", False),
    (["sleep", "100"], "telemprobd", False),
    (["vim", "notes", "telemetry.daemons.probd.main"], "telemprobd", False),
    ([], "telemprobd", False),
])
def test_daemon_command_lines(argv, name, ours):
    assert supervise.is_daemon_cmdline(argv, name) is ours


def test_states():
    assert supervise.state_of(True, True) is supervise.DaemonState.ACTIVE
    assert supervise.state_of(True, False) is supervise.DaemonState.FAILED
    assert supervise.state_of(False, False) is supervise.DaemonState.INACTIVE
    assert supervise.state_of(True, False, written_before_boot=True) is supervise.DaemonState.INACTIVE


def test_child_environment_hides_systemd():
    env = {"PATH": "/bin", "INVOCATION_ID": "x", "LISTEN_FDS": "1", "LISTEN_PID": "9", "JOURNAL_STREAM": "1:2",
           "NOTIFY_SOCKET": "/run/systemd/notify", "TELEMETRY_MODE": "system"}
    child = supervise.child_environment(env, "@telemctl/1")
    assert child == {"PATH": "/bin", "TELEMETRY_MODE": "user", "NOTIFY_SOCKET": "@telemctl/1"}


def test_ready_message():
    assert supervise.is_ready_message(b"READY=1")
    assert supervise.is_ready_message(b"STATUS=ok\nREADY=1\n")
    assert not supervise.is_ready_message(b"STATUS=READY=1")
    assert not supervise.is_ready_message(b"RELOADING=1")


# --- status ------------------------------------------------------------------------------------

counter_names = st.text(alphabet=string.ascii_lowercase + ":-", min_size=1, max_size=15)
raw_counters = st.dictionaries(
    st.tuples(st.sampled_from(["telemprobd", "telempostd", "other"]), counter_names),
    st.integers(min_value=0, max_value=2**40),
)


@given(raw_counters)
def test_counters_keep_every_value_and_show_the_core_ones(raw):
    out = status_mod.counters_of(raw)
    keys = [(c.daemon, c.name) for c in out]
    assert len(keys) == len(set(keys))
    for c in out:
        assert c.value == raw.get((c.daemon, c.name), 0)
    assert set(raw) <= set(keys)
    for daemon, names in status_mod.CORE_COUNTERS.items():
        assert [n for d, n in keys if d == daemon][: len(names)] == list(names)


def test_core_counters_follow_their_sources():
    probd = status_mod.CORE_COUNTERS["telemprobd"]
    assert "received" in probd and "staged" in probd
    assert {f"rejected:{s.value}" for s in AckStatus if not s.kept} <= set(probd)
    postd = status_mod.CORE_COUNTERS["telempostd"]
    # Every fate telempostd decides; IMPORTED entries come from the C journal, no decision.
    assert {o.value for o in Outcome if o is not Outcome.IMPORTED} <= set(postd) and "retried" in postd
    assert postd == tuple(c.value for c in Counter) and "config-error" in postd


@pytest.mark.parametrize("n,text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (5120 * 1024, "5.0 MiB")])
def test_human_bytes(n, text):
    assert status_mod.human_bytes(n) == text


def test_retry_wording():
    assert status_mod.format_retry(None, 100.0) == "none (the queue is empty)"
    assert status_mod.format_retry(90.0, 100.0) == "due now"
    assert status_mod.format_retry(100.0 + 125, 100.0, time.gmtime).endswith("(in 2 min 5 s)")


def test_status_text_and_json_agree():
    st_ = status_mod.Status(
        mode="user", opted_in=True, opt_in_file="/c/opt-in", config_file=None, socket_path="/r/telem-0",
        daemons=(status_mod.DaemonInfo("telemprobd", "active", 12), status_mod.DaemonInfo("telempostd", "inactive")),
        queue=status_mod.QueueInfo("/s/queue.db", records=3, bytes=3000, staged_records=1, staged_bytes=1000,
                                   spooled_records=2, spooled_bytes=2000, deferred_records=1,
                                   cap_bytes=5120 * 1024, next_retry=160.0),
        counters=status_mod.counters_of({("telemprobd", "received"): 4, ("telempostd", "delivered"): 1}),
        now=100.0,
    )
    text = status_mod.format_text(st_, time.gmtime)
    assert "telemprobd:  active (pid 12)" in text
    assert "Queue:       3 records, 2.9 KiB of 5.0 MiB cap (0 %)" in text
    assert "spooled:   2 records" in text
    # Deferred records are staged records the rate limit holds: shown inside staged, not beside it.
    assert re.search(r"^  staged:    1 record, .*\n    of them: 1 record held by the rate limit$", text, re.M)
    assert "Delivery:    nothing tried yet" in text
    assert "(in 1 min 0 s)" in text
    assert re.search(r"telemprobd\s+received\s+4$", text, re.M)
    obj = status_mod.to_json(st_)
    assert obj["daemons"]["telemprobd"] == {"state": "active", "pid": 12, "detail": ""}
    assert obj["queue"]["spooled"] == {"records": 2, "bytes": 2000}
    assert obj["queue"]["staged"] == {"records": 1, "bytes": 1000, "deferred_records": 1}
    assert obj["delivery"] is None
    assert obj["counters"]["telemprobd"]["received"] == 4
    assert obj["counters"]["telempostd"]["expired"] == 0


def _with_delivery(state, *, postd_pid: int | None = 7, now: float = 1000.0):
    daemons = (status_mod.DaemonInfo("telempostd", "active" if postd_pid else "inactive", postd_pid),)
    return status_mod.Status(
        mode="user", opted_in=True, opt_in_file="/c/opt-in", config_file=None, socket_path="/r/telem-0",
        daemons=daemons, queue=status_mod.QueueInfo("/s/queue.db", records=2, next_retry=990.0),
        counters=(), now=now, delivery=state, delivery_current=state is not None and state.pid == postd_pid)


def test_status_shows_the_last_delivery_the_last_error_and_a_pause_while_it_holds():
    state = DeliveryState(7, 999.0, last_success=400.0, last_error=LastError(940.0, "HTTP 503", 503),
                          paused=Pause.BACKOFF, paused_until=1100.0, probe_at=1030.0)
    text = status_mod.format_text(_with_delivery(state), time.gmtime)
    assert "  last sent: 1970-01-01 00:06:40 GMT (10 min 0 s ago)" in text
    assert "  last error: 1970-01-01 00:15:40 GMT (1 min 0 s ago): HTTP 503" in text
    assert re.search(r"^  paused:    until .*\(in 1 min 40 s\): waiting after a failure; next check whether the "
                     r"collector answers .*\(in 30 s\)$", text, re.M), text
    assert re.search(r"^Next retry:  .*\(in 1 min 40 s\)$", text, re.M), text
    obj = status_mod.to_json(_with_delivery(state))["delivery"]
    assert obj == {"last_success": 400.0, "last_error": {"time": 940.0, "detail": "HTTP 503", "http_status": 503},
                   "paused": "backoff", "paused_until": 1100.0, "next_probe": 1030.0}
    # Written by a telempostd that is gone: its pause does not hold (a new one starts afresh).
    gone = status_mod.format_text(_with_delivery(state, postd_pid=None), time.gmtime)
    assert "paused:" not in gone and "last error:" in gone and "Next retry:  due now" in gone
    assert status_mod.to_json(_with_delivery(state, postd_pid=8))["delivery"]["paused"] is None


def test_a_configuration_error_names_the_command_that_lifts_it():
    state = DeliveryState(7, 999.0, last_error=LastError(990.0, "HTTP 400: x", 400), paused=Pause.CONFIG_ERROR,
                          paused_until=4000.0)
    st_ = dataclasses.replace(_with_delivery(state), reload_hint="'telemctl --user reload'")
    assert re.search(r"^  paused:    until .*: a configuration error; fix it and run 'telemctl --user reload'$",
                     status_mod.format_text(st_, time.gmtime), re.M)


def test_the_collectors_words_reach_a_terminal_inert():
    state = DeliveryState(7, 999.0, last_error=LastError(990.0, "HTTP 400: \x1b[2J\x9b31m\u202egone", 400))
    text = status_mod.format_text(_with_delivery(state), time.gmtime)
    assert "HTTP 400: \\x1b[2J\\x9b31m\\u202egone" in text and "\x1b" not in text and "\x9b" not in text


def test_delivery_turned_off_is_said():
    st_ = dataclasses.replace(_with_delivery(None), delivery_enabled=False)
    assert status_mod.format_delivery(st_) == [
        "Delivery:    off (record_server_delivery_enabled=false): records are journaled, never sent"]


def test_an_unreadable_delivery_state_says_so():
    st_ = dataclasses.replace(_with_delivery(None), delivery_error="Permission denied")
    assert status_mod.format_delivery(st_) == ["Delivery:    cannot read delivery.json (Permission denied)"]
    assert status_mod.to_json(st_)["delivery_error"] == "Permission denied"


def test_unreadable_queue_is_reported_not_raised():
    st_ = status_mod.QueueInfo("/s/queue.db", error="permission denied")
    assert status_mod.format_queue(st_) == ["Queue:       /s/queue.db: cannot read (permission denied)"]


# --- systemctl results and tmpfiles --------------------------------------------------------------

def test_unit_failure_messages_end_their_line():
    ok = units.UnitResult("start", "hprobe.timer", 0, "some notice")
    assert ok.messages() == ()
    bad = units.UnitResult("stop", "klogscanner.service", 5, "line one\n\nline two")
    assert bad.messages() == ("line one", "line two", "Failed to stop klogscanner.service. Continuing...")


def test_the_originals_unit_lists():
    assert units.TRIGGER_UNITS == ("hprobe.timer", "telemprobd.socket", "telempostd.path",
                                   "klogscanner.service", "journal-probe-tail.service")
    assert units.SERVICE_UNITS == ("hprobe.service", "pstore-probe.service", "telemprobd.service",
                                   "telempostd.service", "journal-probe.service")


def test_every_shipped_unit_is_stopped_enabled_and_disabled():
    shipped = {p.name.removesuffix(".in") for p in (Path(__file__).resolve().parents[2] / "systemd").glob("*.in")}
    assert "pstore-clean.service" in shipped
    assert set(units.ALL_UNITS) | set(units.OPTIONAL_UNITS) == shipped
    assert not set(units.ALL_UNITS) & set(units.OPTIONAL_UNITS)
    assert units.ALL_UNITS[: len(units.TRIGGER_UNITS)] == units.TRIGGER_UNITS  # triggers stop first


def test_tmpfiles_lines():
    text = (
        "# comment\n"
        "d /var/lib/telemetry 0755 telemetry telemetry -\n"
        "d    /var/spool/telemetry 0750 telemetry telemetry -\n"
        "f /var/log/x 0644 - - -\n"
        "d relative 0750 telemetry telemetry -\n"
        "d /var/log/telemetry/records/ 0750 telemetry telemetry -\n"
        "d\n"
    )
    assert purge.tmpfiles_dirs(text) == ("/var/lib/telemetry", "/var/spool/telemetry", "/var/log/telemetry/records")


@given(st.lists(st.text(alphabet=string.ascii_lowercase + "/", min_size=1, max_size=12), max_size=6))
def test_tmpfiles_dirs_are_absolute_and_normalised(names):
    text = "".join(f"d /{n} 0750 telemetry telemetry -\n" for n in names)
    found = purge.tmpfiles_dirs(text)
    assert len(found) == len(names)
    assert all(os.path.isabs(p) and os.path.normpath(p) == p for p in found)
