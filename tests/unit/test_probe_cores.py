"""The pure cores of the probes: kmsg records and resume logic, pstore dump assembly,
journal selection, the hprobe payload, telem-record-gen's option checks and the retry
policy of the long-running probes."""

from __future__ import annotations

import datetime
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.ack import Ack, AckStatus
from telemetry.probes import common, hprobe, journal_select, kmsg, pstore
from telemetry.probes import telem_record_gen as gen

# --- kmsg -------------------------------------------------------------------------------


def test_parse_record():
    rec = kmsg.parse_record(b"4,1234,5140900,-,caller=T1;WARNING: CPU: 0 PID: 1 at x\n")
    assert rec == kmsg.KmsgRecord(0, 4, 1234, 5140900, "WARNING: CPU: 0 PID: 1 at x")
    assert rec.from_kernel
    assert rec.log_line() == "<4>[    5.140900] WARNING: CPU: 0 PID: 1 at x"
    assert kmsg.parse_record(b"14,7,1,-;user message").facility == 1
    assert kmsg.parse_record(b" SUBSYSTEM=net") is None
    assert kmsg.parse_record(b"garbage") is None
    assert kmsg.parse_record(b"6,1,1,-;bad \xff byte\x01").message == "bad \ufffd byte?"


def test_state_round_trip_and_bad_state():
    s = kmsg.ScanState("b" * 32, 42).remember("x").remember("y").remember("x")
    assert s.sent == ("y", "x")
    assert kmsg.decode_state(s.encode()) == s
    for bad in (b"", b"{", b"[]", b'{"boot_id": 1, "next_seq": 0, "sent": []}',
                b'{"boot_id": "a", "next_seq": -1, "sent": []}', b'{"boot_id": "a", "next_seq": 1, "sent": [1]}',
                b"\xff", b"[" * 100_000):
        with pytest.raises(kmsg.StateError):
            kmsg.decode_state(bad)
    many = kmsg.ScanState()
    for i in range(kmsg.SENT_MEMORY + 10):
        many = many.remember(str(i))
    assert len(many.sent) == kmsg.SENT_MEMORY and many.sent[-1] == str(kmsg.SENT_MEMORY + 9)


WARN = ["WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2", "Call Trace:", "  f+0x1/0x2", "---[ end trace 1 ]---"]
BUG = ["BUG: unable to handle kernel paging request", "Call Trace:", "  g+0x1/0x2", "Code: 00"]
NOISE = ["usb 1-1: new device", "eth0: link up", "  indented noise"]

messages = st.lists(st.one_of(st.sampled_from([WARN, BUG]), st.lists(st.sampled_from(NOISE), max_size=3)),
                    max_size=12).map(lambda parts: [line for part in parts for line in part])


def records_of(lines: list[str], user_every: int = 0) -> list[kmsg.KmsgRecord]:
    return [kmsg.KmsgRecord(1 if user_every and i % user_every == 0 else 0, 4, i, i * 10, line)
            for i, line in enumerate(lines)]


def scan(scanner: kmsg.KmsgScanner, records, sent: kmsg.ScanState) -> tuple[list[kmsg.Found], kmsg.ScanState]:
    out = []
    for rec in records:
        for found in scanner.feed(rec):
            if found.fingerprint not in sent.sent:
                out.append(found)
                sent = sent.remember(found.fingerprint)
    return out, sent


@settings(max_examples=200, deadline=None)
@given(messages, st.data())
def test_kmsg_restart_anywhere_loses_and_repeats_nothing(lines, data):
    records = records_of(lines)
    whole, _ = scan(kmsg.KmsgScanner("boot"), records, kmsg.ScanState("boot"))
    cut = data.draw(st.integers(0, len(records)))
    first = kmsg.KmsgScanner("boot")
    part1, state = scan(first, records[:cut], kmsg.ScanState("boot"))
    state = kmsg.ScanState("boot", first.next_seq, state.sent)
    # the ring still holds everything: the second run reads from the start and skips
    part2, _ = scan(kmsg.KmsgScanner("boot", state), records, state)
    assert [f.oops for f in part1 + part2] == [f.oops for f in whole]
    assert len({f.fingerprint for f in whole}) == len(whole)


def test_kmsg_new_boot_starts_over_and_user_records_are_ignored():
    records = records_of(WARN)
    state = kmsg.ScanState("old-boot", 1000)
    found, _ = scan(kmsg.KmsgScanner("new-boot", state), records, state)
    assert len(found) == 1 and found[0].fingerprint == "kmsg:new-boot:0"
    forged = [kmsg.KmsgRecord(1, 4, i, 0, line) for i, line in enumerate(WARN)]
    found, _ = scan(kmsg.KmsgScanner("b"), forged, kmsg.ScanState("b"))
    assert found == []


def test_text_scanner_fingerprints_depend_on_content():
    a = kmsg.TextScanner().feed_all(["[1.0] " + line for line in WARN])
    b = kmsg.TextScanner().feed_all(["[2.0] " + line for line in WARN])
    c = kmsg.TextScanner().feed_all(["[1.0] " + line for line in WARN])
    assert len(a) == len(b) == 1 and a[0].fingerprint != b[0].fingerprint and a[0].fingerprint == c[0].fingerprint


# --- pstore -----------------------------------------------------------------------------

def efi(count: int, part: int, stamp: int = 1700000000) -> str:
    return f"dmesg-efi-{(stamp * 100 + part) * 1000 + count}"


def test_parse_name():
    assert pstore.parse_name(efi(7, 3)) == pstore.ChunkName("efi", 7, 3)
    assert pstore.parse_name("dmesg-efi_pstore-170000000003007") == pstore.ChunkName("efi", 7, 3)
    assert pstore.parse_name("dmesg-ramoops-4") == pstore.ChunkName("ramoops", 5, 1)
    for other in ("console-ramoops-0", "dmesg-ramoops-", "dmesg-efi-12.enc.z", "dmesg-efi-x", "../dmesg-efi-1"):
        assert pstore.parse_name(other) is None


def test_assembly_order_completeness_and_last_line():
    chunks = [
        pstore.Chunk.from_file(efi(1, 1), b"Panic#1 Part1\nline 3\nKernel panic - not syncing: x"),
        pstore.Chunk.from_file(efi(1, 2), b"Panic#1 Part2\nline 1\nline 2\n"),
        pstore.Chunk.from_file("dmesg-ramoops-0", b"Oops#1 Part1\nBUG: y\n"),
        pstore.Chunk.from_file(efi(2, 2), b"Oops#2 Part2\nonly part 2\n"),
        pstore.Chunk.from_file(efi(3, 1), b"header only, no newline"),
    ]
    dumps = pstore.assemble(chunks)
    assert [(d.backend, d.count, d.complete) for d in dumps] == [
        ("efi", 1, True), ("efi", 2, False), ("efi", 3, False), ("ramoops", 1, True)]
    assert dumps[0].text_lines() == ["line 1", "line 2", "line 3", "Kernel panic - not syncing: x"]
    (panic,) = pstore.dump_oopses(dumps[0])
    assert panic.classification == "org.clearlinux/kernel/panic"
    (bug,) = pstore.dump_oopses(dumps[3])  # single-part dumps work (the original aborted)
    assert bug.reason == "BUG: y"
    assert dumps[0].fingerprint() != dumps[3].fingerprint()


@given(st.integers(0, 999), st.integers(1, 99), st.integers(0, 2**31))
def test_efi_names_round_trip(count, part, stamp):
    assert pstore.parse_name(efi(count, part, stamp)) == pstore.ChunkName("efi", count, part)


# --- journal selection ------------------------------------------------------------------

BOOT = "0123456789abcdef0123456789abcdef"


def entry(**fields: str) -> journal_select.Entry:
    base = {"_BOOT_ID": BOOT, "_PID": "1", "_UID": "0", "_TRANSPORT": "journal", "EXIT_CODE": "exited",
            "MESSAGE": "a.service: Main process exited", "__REALTIME_TIMESTAMP": "2000"}
    base.update(fields)
    return journal_select.Entry({k: v for k, v in base.items() if v != "-"})


@pytest.mark.parametrize(
    "fields, override, expected",
    [
        ({}, False, True),
        ({"_BOOT_ID": "f" * 32}, False, False),
        ({"_PID": "4242", "_UID": "1000"}, False, False),  # forged EXIT_CODE
        ({"_PID": "1", "_UID": "1000"}, False, False),  # PID 1 of a user namespace, not root
        # The systemd binary run by a user (LD_PRELOAD), or a user manager: both the user's own.
        ({"_PID": "900", "_UID": "1000", "_EXE": "/usr/lib/systemd/systemd", "_COMM": "systemd"}, False, False),
        ({"_PID": "900", "_UID": "1000", "_EXE": "/usr/lib/systemd/systemd", "_SYSTEMD_UNIT": "user@1000.service",
          "_SYSTEMD_USER_UNIT": "init.scope"}, False, False),
        ({"_SYSTEMD_UNIT": "init.scope"}, False, True),  # PID 1, as journald records it under systemd
        ({"_SYSTEMD_UNIT": "sshd.service"}, False, False),  # PID 1 of a container, seen from the host
        ({"_TRANSPORT": "stdout"}, False, False),
        ({"EXIT_CODE": "killed"}, False, False),
        ({"EXIT_CODE": "-", "PRIORITY": "2"}, False, False),
        ({"EXIT_CODE": "-", "PRIORITY": "2"}, True, True),
        ({"EXIT_CODE": "-", "PRIORITY": "2", "_UID": "1000", "_PID": "5"}, True, False),
        ({"EXIT_CODE": "-", "PRIORITY": "3", "_UID": "-", "_PID": "-", "_TRANSPORT": "kernel"}, True, True),
        ({"EXIT_CODE": "-", "PRIORITY": "4"}, True, False),
        ({"__REALTIME_TIMESTAMP": "999"}, False, False),  # before opting in
    ],
)
def test_journal_selection(fields, override, expected):
    assert journal_select.selects(entry(**fields), BOOT, privacy_override=override, since_usec=1000) is expected


def test_journal_entry_conversion_and_payload():
    raw = {"_BOOT_ID": uuid.UUID(BOOT), "_PID": 1, "MESSAGE": b"bytes \xff",
           "__REALTIME_TIMESTAMP": datetime.datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=datetime.UTC),
           "X": [b"first", b"second"]}
    e = journal_select.entry_from_reader(raw)
    assert e.fields["_BOOT_ID"] == BOOT and e.fields["_PID"] == "1" and e.realtime_usec == 1_000_005
    assert e.fields["X"] == "first"
    assert journal_select.journal_payload(e) == "MESSAGE=bytes \ufffd\n"


# --- hprobe -----------------------------------------------------------------------------

def test_hello_payload_sections():
    assert hprobe.hello_payload() == "hello\n"
    assert hprobe.hello_payload("C", 5, ["b", ".x", "a"]) == "hello\nLC_ALL: C\nuptime: 5\n\nBundles (2):\na\nb\n"


def test_hello_payload_overflow_marks_the_cut():
    text = hprobe.hello_payload(bundles=[f"bundle-{i:05d}" for i in range(2000)])
    assert len(text) == hprobe.BUFFER_TEXT_MAX and text.endswith("\n...")


@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40), max_size=400))
def test_hello_payload_always_fits(bundles):
    text = hprobe.hello_payload("C", 1, bundles)
    assert len(text.encode()) <= hprobe.BUFFER_TEXT_MAX
    assert text.startswith("hello\nLC_ALL: C\nuptime: 1\n\nBundles (")


# --- telem-record-gen -------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, value",
    [("1", 1), (" 4", 4), ("+3", 3), ("", 0), ("-1", 2**64 - 1), ("007", 7)],
)
def test_parse_number_like_strtoul(text, value):
    assert gen.parse_number(text, "severity") == value


@pytest.mark.parametrize("text", ["1x", "x", "1 ", "0x10", "1.0"])
def test_parse_number_rejects_trailing_text(text):
    with pytest.raises(gen.OptionError, match="Invalid severity number"):
        gen.parse_number(text, "severity")


def test_classification_first_segment_off_by_one_kept():
    gen.check_options(gen.Options("a" * 41 + "/b/c"))
    with pytest.raises(gen.OptionError, match="at most 40"):
        gen.check_options(gen.Options("a/" + "b" * 41 + "/c"))


@given(st.text(max_size=130), st.integers(0, 6), st.one_of(st.none(), st.text(max_size=40)))
def test_check_options_agrees_with_the_record_rules(cls, severity, event_id):
    from telemetry.record import RecordError, check_classification, check_event_id

    try:
        gen.check_options(gen.Options(cls, severity, 1, event_id))
    except gen.OptionError:
        return
    # what the CLI accepts, the record model accepts (bar control characters it refuses)
    assert 1 <= severity <= 4
    if event_id is not None:
        check_event_id(event_id)
    if cls.isprintable():
        try:
            check_classification(cls)
        except RecordError as e:  # pragma: no cover - would be a disagreement
            raise AssertionError(e) from None


# --- sending with retries (klogscanner, journalprobe) -----------------------------------

def test_send_retrying_backs_off_until_the_outcome_is_final(monkeypatch):
    def result(outcome, status=None):
        return common.SendResult(outcome, "", Ack(status) if status else None)

    def probe_answering(*results):
        probe = object.__new__(common.Probe)  # no config, client or logging set-up needed
        probe.name = "test"  # its logger: logging.getLogger("test")
        answers = iter(results)
        monkeypatch.setattr(probe, "send", lambda record: next(answers))
        return probe

    sleeps: list[float] = []
    monkeypatch.setattr(common.time, "sleep", sleeps.append)
    busy = result(common.Outcome.REJECTED, AckStatus.BUSY)
    away = result(common.Outcome.UNAVAILABLE)
    retried = [away, busy] * 4 + [result(common.Outcome.SENT, AckStatus.ACCEPTED)]
    assert probe_answering(*retried).send_retrying(None, retry=True).sent
    assert sleeps == [1, 2, 4, 8, 16, 32, 60, 60]
    sleeps.clear()
    assert probe_answering(busy).send_retrying(None, retry=False) is busy
    invalid = result(common.Outcome.REJECTED, AckStatus.INVALID)
    assert probe_answering(away, invalid).send_retrying(None, retry=True) is invalid
    not_in = result(common.Outcome.NOT_OPTED_IN)
    assert probe_answering(not_in).send_retrying(None, retry=True) is not_in
    assert sleeps == [1]


def test_a_stop_during_the_wait_ends_send_retrying_at_once(monkeypatch):
    """A real SIGTERM to this process while the probe waits to retry: the wait ends and
    the last failure comes back, with `stopping` set for the caller to save and exit."""
    import os
    import signal
    import threading

    from telemetry.daemons.runtime.signals import Signals

    probe = object.__new__(common.Probe)
    probe.name = "test"  # its logger: logging.getLogger("test")
    away = common.SendResult(common.Outcome.UNAVAILABLE, "")
    monkeypatch.setattr(probe, "send", lambda record: away)
    monkeypatch.setattr(common, "RETRY_MAX_DELAY", 3600.0)
    with Signals() as sig:
        probe.signals = sig
        timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        try:
            assert probe.send_retrying(None, retry=True) is away  # not an hour of retries
        finally:
            timer.cancel()
        assert probe.stopping and probe.stop_status() == 0
