"""crashprobe's pure decisions: classification, payload layout, flood control, arguments,
journal entries, symbol choice and the DWARF helpers."""

from __future__ import annotations

import importlib.util
import io
import os
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.limits import PAYLOAD_MAX
from telemetry.probes.crash import args as A
from telemetry.probes.crash import flood as F
from telemetry.probes.crash.analyze import Analysis, Frame, ThreadTrace
from telemetry.probes.crash.identity import parse_start_ticks, parse_status
from telemetry.probes.crash.journal_source import COREDUMP_MESSAGE_ID, crash_from_entry, trusted
from telemetry.probes.crash.lines import SourceLine, _Inflating, parse_aranges
from telemetry.probes.crash.payload import (
    Category,
    Header,
    backtrace_payload,
    classify_path,
    frame_line,
    printable,
    stub_payload,
)
from telemetry.probes.crash.pipeline import Action, CrashEvent, Namespace, decide
from telemetry.probes.crash.symbols import SymbolTable
from telemetry.probes.crash.unwind import StopReason
from telemetry.record import check_payload

# --- classification (spec/probes.md section 3) ------------------------------------------


@pytest.mark.parametrize(
    ("path", "filters_off", "category"),
    [
        ("/builddir/build/BUILD/x/a.out", False, Category.BUILD),
        ("!builddir!build!BUILD!x!a.out", False, Category.BUILD),
        ("/usr/local/bin/x", False, Category.THIRD_PARTY),
        ("!usr!local!bin!x", False, Category.THIRD_PARTY),
        ("/opt/x", False, Category.THIRD_PARTY),
        ("/home/me/a.out", False, Category.THIRD_PARTY),
        ("/usr/bin/gedit", False, None),
        ("!usr!bin!gedit", False, None),
        (None, False, None),
        ("/opt/x", True, None),
        ("/builddir/build/BUILD/x", True, None),
    ],
)
def test_path_filters(path, filters_off, category):
    assert classify_path(path, filters_off) is category


def test_categories_are_the_originals():
    assert [(c.classification, c.severity) for c in Category] == [
        ("org.clearlinux/crash/clr-build", 2), ("org.clearlinux/crash/unknown", 2),
        ("org.clearlinux/crash/clr", 3), ("org.clearlinux/crash/error", 4)]


@pytest.mark.parametrize(
    ("event", "filters_off", "action", "category"),
    [
        (CrashEvent(raw_path="!usr!bin!x", uid=990), False, Action.SKIP, Category.CLR),
        (CrashEvent(raw_path="!opt!x"), False, Action.FIXED, Category.THIRD_PARTY),
        (CrashEvent(raw_path="!usr!bin!x", namespace=Namespace.FOREIGN), False, Action.FIXED, Category.THIRD_PARTY),
        (CrashEvent(raw_path="!usr!bin!x", namespace=Namespace.FOREIGN), True, Action.ANALYZE, Category.CLR),
        (CrashEvent(raw_path="!usr!bin!sudo", dump_mode=2), False, Action.STUB, Category.CLR),
        (CrashEvent(raw_path="!usr!bin!sudo", credentials_changed=True), False, Action.STUB, Category.CLR),
        (CrashEvent(raw_path="!usr!bin!x", dump_mode=1), False, Action.ANALYZE, Category.CLR),
        (CrashEvent(process_name="x"), False, Action.ANALYZE, Category.CLR),
    ],
)
def test_decide(event, filters_off, action, category):
    outcome = decide(event, filters_off=filters_off, service_uid=990)
    assert (outcome.action, outcome.category) == (action, category)


def test_event_names_and_header():
    e = CrashEvent(process_name="comm", raw_path="!usr!bin!real", signal=6, pid=7)
    assert e.executable == "/usr/bin/real"
    assert e.header() == Header("/usr/bin/real", 7, 6)
    assert CrashEvent(process_name="comm").header(3, "/from/core") == Header("comm", 3, None)
    assert CrashEvent().header(3, "/from/core").process == "/from/core"


# --- payload layout ----------------------------------------------------------------------------

def frame(name, module="/usr/lib/libc.so.6", offset=0x10, source=None):
    return Frame(0x1000, module, offset, name, source)


def test_frame_lines():
    assert frame_line(0, frame("g_closure_invoke", source=SourceLine("../gobject/gclosure.c", 810))) == \
        "#0 g_closure_invoke() - [/usr/lib/libc.so.6] - ../gobject/gclosure.c:810"
    assert frame_line(1, frame("gtk_main")) == "#1 gtk_main() - [/usr/lib/libc.so.6] (+0x10)"
    assert frame_line(2, frame(None)) == "#2 ??? - [/usr/lib/libc.so.6] (+0x10)"
    assert frame_line(3, Frame(0xdead0000, None, None, None)) == "#3 (no symbols) at 0xdead0000"
    assert frame_line(4, frame("evil\nname\0")) == "#4 evil?name?() - [/usr/lib/libc.so.6] (+0x10)"


def test_payload_layout_as_the_original():
    threads = (
        ThreadTrace(2231, 11, (frame("a"), frame("main", "/usr/bin/gedit", 0x20, SourceLine("/b/gedit.c", 157))),
                    StopReason.END),
        ThreadTrace(2240, 11, (frame("__poll"),), StopReason.END),
    )
    text = backtrace_payload(Header("/usr/bin/gedit", 2231, 11), Analysis(2231, threads, None))
    assert text == (
        "Process: /usr/bin/gedit\nPID: 2231\nSignal: 11\n\n"
        "Backtrace (TID 2231):\n#0 a() - [/usr/lib/libc.so.6] (+0x10)\n#1 main() - [/usr/bin/gedit] - /b/gedit.c:157\n"
        "\nBacktrace (TID 2240):\n#0 __poll() - [/usr/lib/libc.so.6] (+0x10)\n"
    )
    err = backtrace_payload(Header("x", None, -1), Analysis(None, (), "core truncated at byte 9"))
    assert err == "Process: x\nError: core truncated at byte 9\n"
    capped = Analysis(1, (ThreadTrace(1, 11, (frame("a"),), StopReason.FRAME_LIMIT),), None)
    assert "\nToo many frames. Backtrace truncated.\n\n" in backtrace_payload(Header("x", 1, 11), capped)
    assert stub_payload(Header("x", 1, 11), "why") == "Process: x\nPID: 1\nSignal: 11\n\nBacktrace: not collected (why)\n"


names = st.text(max_size=300)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2**22), st.lists(st.tuples(names, names, st.none() | names), max_size=70)),
                min_size=1, max_size=12),
       names, st.none() | names)
def test_payload_always_fits_and_is_valid(threads, process, error):
    traces = tuple(
        ThreadTrace(tid, 11, tuple(Frame(1, mod or None, 5, fn or None, SourceLine(src, 1) if src else None)
                                   for fn, mod, src in frames), StopReason.END)
        for tid, frames in threads
    )
    text = backtrace_payload(Header(process, 1, 11), Analysis(1, traces, error))
    data = text.encode()
    assert len(data) <= PAYLOAD_MAX
    check_payload(data)
    assert text.endswith("\n")
    if len(traces[0].frames) and "Backtrace (TID" in text:
        assert text.index(f"Backtrace (TID {traces[0].tid})") == text.index("Backtrace (TID")


@given(st.text())
def test_printable(text):
    out = printable(text)
    assert len(out) <= 256 and all(ch.isprintable() for ch in out)
    out.encode("utf-8")


# --- flood control -------------------------------------------------------------------------

def test_window_and_daily_cap():
    policy = F.FloodPolicy(window=60, daily_cap=3)
    state = F.FloodState()
    verdicts = []
    for t in (0, 10, 61, 200, 300, 400, 86400 + 1):
        v, state = F.decide(state, "/usr/bin/x", t, policy)
        verdicts.append(v)
    assert verdicts == [F.Verdict.REPORT, F.Verdict.WITHIN_WINDOW, F.Verdict.REPORT, F.Verdict.REPORT,
                        F.Verdict.DAILY_CAP, F.Verdict.DAILY_CAP, F.Verdict.REPORT]
    assert (state.reported, state.suppressed_window, state.suppressed_cap) == (4, 1, 2)
    v, state = F.decide(state, "/usr/bin/other", 400, policy)
    assert v is F.Verdict.REPORT


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 3 * 86400, allow_nan=False), max_size=60), st.integers(0, 600), st.integers(1, 10))
def test_flood_rules_hold_for_any_crash_times(times, window, cap):
    policy = F.FloodPolicy(window, cap)
    state = F.FloodState()
    reported = []
    for t in sorted(times):
        v, state = F.decide(state, "x", t, policy)
        if v is F.Verdict.REPORT:
            reported.append(t)
    for i, t in enumerate(reported):
        if i and window:
            assert t - reported[i - 1] >= window
        assert sum(1 for u in reported if t - 86400 < u <= t) <= cap
    assert state.reported + state.suppressed_window + state.suppressed_cap == len(times)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1000, 1001, None]), st.floats(0, 86400, allow_nan=False)), max_size=40))
def test_one_users_crashes_never_suppress_anothers(crashes):
    """Flood control counts per crashed user: the verdicts for one uid are what they would
    be if no other user had crashed the same program."""
    policy = F.FloodPolicy(window=60, daily_cap=3)
    crashes = sorted(crashes, key=lambda c: c[1])
    mixed: dict = {}
    state = F.FloodState()
    for uid, t in crashes:
        v, state = F.decide(state, "/usr/bin/x", t, policy, uid)
        mixed.setdefault(uid, []).append(v)
    for uid in mixed:
        alone = F.FloodState()
        verdicts = []
        for u, t in crashes:
            if u == uid:
                v, alone = F.decide(alone, "/usr/bin/x", t, policy, uid)
                verdicts.append(v)
        assert verdicts == mixed[uid]
    assert F.decode(F.encode(state)) == state


def test_flood_state_roundtrip_and_garbage():
    policy = F.FloodPolicy(0, 5)
    state = F.FloodState()
    for i in range(3):
        _, state = F.decide(state, f"/bin/{i}", 100.0 + i, policy)
    assert F.decode(F.encode(state)) == state
    for junk in (b"", b"{", b"[]", b'{"executables": 3}', b'{"executables": [{"path": 1}]}', b"\xff\xfe"):
        assert F.decode(junk) == F.FloodState()


def test_clock_going_back_does_not_block_forever():
    policy = F.FloodPolicy(60, 5)
    _, state = F.decide(F.FloodState(), "x", 10_000_000.0, policy)
    v, _ = F.decide(state, "x", 1_000.0, policy)  # the clock was reset to 1970
    assert v is F.Verdict.REPORT


def test_flood_store(tmp_path):
    store = F.FloodStore(str(tmp_path / "state"))
    policy = F.FloodPolicy(60, 5)
    assert store.check("x", policy, now=100)[0] is F.Verdict.REPORT
    assert store.check("x", policy, now=101)[0] is F.Verdict.WITHIN_WINDOW
    assert store.load().reported == 1


# --- arguments, /proc text, journal entries -------------------------------------------------

def test_core_pattern_fits_the_kernel():
    pattern = A.core_pattern("/usr/bin")
    assert pattern.startswith("|/usr/bin/crashprobe -p %e -E %E -s %s ")
    assert len(pattern) <= A.CORENAME_MAX
    with pytest.raises(A.ArgumentError):
        A.core_pattern("/" + "x" * 100)


def test_argument_parsing():
    assert A.parse_signal("11") == 11 and A.parse_signal(None) is None
    assert A.parse_optional_id("pid", "") is None
    assert A.parse_optional_id("pid", "42") == 42
    for bad in ("4x", "-1", "99999999999"):
        with pytest.raises(A.ArgumentError):
            A.parse_optional_id("pid", bad)
    with pytest.raises(A.ArgumentError):
        A.parse_signal("11x")


def test_proc_text():
    assert parse_start_ticks("42 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 999 20") == 999
    assert parse_start_ticks("garbage") is None
    assert parse_status("Uid:\t1\t2\t3\t4\nNSpid:\t10\t2\n")["NSpid"] == "10\t2"


def entry(**over):
    base = {"MESSAGE_ID": COREDUMP_MESSAGE_ID, "__CURSOR": "c1", "_UID": 0, "_EXE": "/usr/lib/systemd/systemd-coredump",
            "COREDUMP_PID": 5, "COREDUMP_UID": 1000, "COREDUMP_GID": 1000, "COREDUMP_SIGNAL": 11,
            "COREDUMP_EXE": "/usr/bin/x", "COREDUMP_COMM": "x", "COREDUMP_FILENAME": "/var/lib/systemd/coredump/c.zst"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_journal_entries():
    crash = crash_from_entry(entry())
    assert crash.event == CrashEvent("x", "/usr/bin/x", 11, 5, 1000, 1000, None, Namespace.HOST, False, "/usr/bin/x")
    assert crash.core.path.endswith(".zst") and crash.core.decompressor[0] == "zstd"
    assert crash_from_entry(entry(COREDUMP=b"\x7fELF")).core.data == b"\x7fELF"
    assert crash_from_entry(entry(COREDUMP_FILENAME=None)).core.missing_reason
    assert crash_from_entry(entry(COREDUMP_ROOT="/var/lib/machines/m")).event.namespace is Namespace.FOREIGN
    setuid = entry(COREDUMP_PROC_STATUS="Uid:\t1000\t0\t0\t0\nGid:\t1\t1\t1\t1\n")
    assert crash_from_entry(setuid).event.credentials_changed
    assert crash_from_entry(entry(MESSAGE_ID="0" * 32)) is None
    assert trusted(entry(), frozenset({0}))
    assert not trusted(entry(_UID=1000), frozenset({0}))
    assert not trusted(entry(_EXE="/usr/bin/logger"), frozenset({0}))
    # systemd-coredump's service logs as the crashed user; a user's own process cannot be it
    assert trusted(entry(_UID=1000, _SYSTEMD_UNIT="systemd-coredump@3-1234-0.service"), frozenset({0}))
    assert not trusted(entry(_UID=1000, _SYSTEMD_UNIT="user@1000.service"), frozenset({0}))
    # the unit alone: journald may not have read _EXE before the service exited
    no_exe = {k: v for k, v in entry(_UID=1000, _SYSTEMD_UNIT="systemd-coredump@3-1234-0.service").items()
              if k != "_EXE"}
    assert trusted(no_exe, frozenset({0}))
    assert not trusted({k: v for k, v in entry(_UID=0).items() if k != "_EXE"}, frozenset({0}))


# --- symbols and DWARF helpers ----------------------------------------------------------------

def test_symbol_lookup():
    strtab = b"\0main\0helper\0label\0"
    table = SymbolTable([0x1000, 0x1040, 0x2000], [0x1040, 0x1050, 0x2200], [1, 6, 13], strtab)
    assert table.lookup(0x1000).name == "main"
    assert (table.lookup(0x1045).name, table.lookup(0x1045).offset) == ("helper", 5)
    assert table.lookup(0x1050) is None  # past helper's end, before the label
    assert table.lookup(0x2100).name == "label"
    assert table.lookup(0x2200) is None
    assert table.lookup(0x10) is None


def test_aranges():
    header = struct.pack("<IHIBB", 0, 2, 0x30, 8, 0) + b"\0" * 4
    body = struct.pack("<QQQQQQ", 0x1000, 0x100, 0x2000, 0x10, 0, 0)
    unit = header + body
    unit = struct.pack("<I", len(unit) - 4) + unit[4:]
    assert parse_aranges(io.BytesIO(unit + unit), 2 * len(unit)) == [(0x1000, 0x1100, 0x30), (0x2000, 0x2010, 0x30)] * 2
    assert parse_aranges(io.BytesIO(b"\xff" * 40), 40) == []


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200_000), st.lists(st.tuples(st.integers(0, 250_000), st.integers(0, 70_000)), max_size=8))
def test_inflating_stream_reads_like_the_whole(data, reads):
    packed = zlib.compress(data)
    stream = _Inflating(io.BytesIO(packed), 0, len(packed), len(data))
    for pos, size in reads:
        stream.seek(pos)
        assert stream.read(size) == data[pos : pos + size]


# --- where root's state lives -----------------------------------------------------------------

def test_root_state_is_not_in_the_service_accounts_directory():
    from telemetry.paths import Paths
    from telemetry.probes.crash import places

    system = Paths.system()
    for where in (places.state_dir(system), places.run_dir(system), places.cache_dir(system)):
        assert not where.startswith(system.state_dir.rstrip("/") + "/") and where != system.state_dir


def test_private_dir_refuses_what_others_can_write(tmp_path):
    from telemetry.probes.crash.places import PlaceUnsafe, private_dir

    good = private_dir(str(tmp_path / "ok"))
    assert oct(os.stat(good).st_mode & 0o777) == "0o700"
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PlaceUnsafe, match="can be written by others"):
        private_dir(str(shared))
    with pytest.raises(PlaceUnsafe, match="can be written by others"):
        private_dir(str(shared / "inner"))  # below a directory others can rename it in
    (tmp_path / "link").symlink_to(good)
    with pytest.raises(PlaceUnsafe, match="symbolic link"):
        private_dir(str(tmp_path / "link"))


def test_handler_argv_is_read_without_the_cli():
    from telemetry.probes.crash.args import CORE_PATTERN_ARGS, parse_handler_argv

    argv = CORE_PATTERN_ARGS.replace("%e", "prog").replace("%E", "!usr!bin!prog").split()
    argv = [a.replace("%P", "42").replace("%u", "1000").replace("%g", "100").replace("%d", "1")
            .replace("%t", "7").replace("%F", "").replace("%s", "11") for a in argv]
    parsed = parse_handler_argv(argv)
    assert (parsed.get("process_name"), parsed.get("pid"), parsed.get("pidfd"), parsed.get("signal")) == \
        ("prog", "42", "", "11")
    assert parse_handler_argv(["-p", "x", "-c", "/tmp/core", "-v"]).verbose
    for other in (["--help"], ["--core", "c"], ["-p"], ["-E", "x"], ["-p", "x", "--bogus"], ["--journal"]):
        assert parse_handler_argv(other) is None  # the full command line explains these


# --- demangling ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("mangled", "readable"), [
    ("_ZNK6shapes3BoxIiE4openEi", "shapes::Box<int>::open(int) const"),
    ("_Z7run_boxv", "run_box()"),
    ("_ZN4main6shapes5Crate4pick17he98b930a7a297ea4E", "main::shapes::Crate::pick"),  # hash dropped, as gdb
    ("_RNvNtCsjrHSEGnQ3l9_3std2rt19lang_start_internal", "std::rt::lang_start_internal"),
    ("_ZN3std2rt10lang_start28_$u7b$$u7b$closure$u7d$$u7d$17hdbee5a3fa7ab6636E", "std::rt::lang_start::{{closure}}"),
    ("main", "main"),
    ("_Zgarbage", "_Zgarbage"),
    ("_Z" + "N1a" * 3000 + "E", "_Z" + "N1a" * 3000 + "E"),  # past the length cap: left alone
])
def test_demangle(mangled, readable):
    from telemetry.probes.crash.demangle import demangle

    if mangled.startswith(("_R", "_ZN4main", "_ZN3std")) and importlib.util.find_spec("rust_demangler") is None:
        pytest.skip("rust-demangler (the extra 'rust') is not installed: Rust names stay mangled")

    assert demangle(mangled) == readable


@given(st.text(max_size=300))
def test_demangle_never_raises(name):
    from telemetry.probes.crash.demangle import demangle

    assert isinstance(demangle("_Z" + name), str) and isinstance(demangle("_R" + name), str)
