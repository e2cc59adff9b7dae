"""Crash and kernel grouping (pure parts): payloads to stacks, the never-guilty list, the
guilty frame, stack signatures, and what a batch adds to the views' counters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from views_dataset import (
    PROGRAMS,
    crash_payload,
    crash_stub,
    mce_payload,
    oops_reports,
    record,
    with_ids,
)

from telemetry_collector.derive import counts, crashes, oopses
from telemetry_collector.derive.counts import RECORD_SOURCE, Parsed, gap_after
from telemetry_collector.derive.guilty import (
    DEFAULT_CRASH,
    DEFAULT_KERNEL,
    Entry,
    NeverGuilty,
    NeverGuiltyError,
    choose_guilty,
    default_list,
    plain_name,
)
from telemetry_collector.derive.parsers import Fact, ParserError, check, fact_ok, matches
from telemetry_collector.derive.stacks import (
    NO_BACKTRACE,
    Domain,
    Frame,
    Guilty,
    Stack,
    frames_from_text,
    frames_text,
)
from telemetry_collector.plugins.mce import PARSER as MCE

LIBC = "/usr/lib64/libc.so.6"
CRASH = default_list(Domain.CRASH)
KERNEL = default_list(Domain.KERNEL)


def guilty_of(program: str, stack: int = 0) -> Guilty:
    parsed = crashes.stack_of(crash_payload(program, PROGRAMS[program][stack]))
    assert parsed is not None
    return choose_guilty(parsed, CRASH)


# --- crashprobe's payloads ----------------------------------------------------------------

def test_crash_report_to_stack():
    payload = crash_payload("/usr/bin/vim", PROGRAMS["/usr/bin/vim"][0])
    stack = crashes.stack_of(payload)
    assert stack is not None and stack.domain is Domain.CRASH and stack.program == "/usr/bin/vim"
    names = [f.function for f in stack.frames]
    assert names[:7] == ["raise", "abort", "__libc_message", "malloc_printerr", "_int_free", "free", "vim_free"]
    assert names[-4:] == ["main", "__libc_start_call_main", "__libc_start_main", "_start"]
    assert stack.frames[0] == Frame("raise", LIBC, 0x11D3)  # no source line: its offset is kept
    assert stack.frames[6].offset is None  # a source line instead
    assert "__poll" not in names  # only the crashing thread


@pytest.mark.parametrize(("program", "stack", "expected"), [
    ("/usr/bin/vim", 0, Guilty("vim_free", "/usr/bin/vim")),  # glibc's double-free check
    ("/usr/lib/systemd/systemd-journald", 0,  # an assertion
     Guilty("journal_file_append_entry", "/usr/lib64/systemd/libsystemd-shared-254.so")),
    ("/usr/bin/gnome-shell", 0, Guilty("meta_window_actor_queue_destroy", "/usr/lib64/libmutter-12.so.0")),
    ("/usr/bin/konsole", 0, Guilty("Konsole::Session::run", "/usr/lib64/libkonsoleprivate.so.23")),  # C++ terminate
    ("/usr/bin/rg", 0, Guilty("grep_searcher::searcher::Searcher::search_path", "/usr/bin/rg")),  # a Rust panic
    ("/usr/bin/containerd", 0, Guilty("github.com/containerd/containerd/snapshots/overlay.(*snapshotter).Mounts",
                                      "/usr/bin/containerd")),  # Go's signal path
    ("/usr/bin/Xorg", 0, Guilty("fbBlt", "/usr/lib64/xorg/modules/libfb.so")),  # memmove given a bad pointer
    ("/usr/sbin/sshd", 0, Guilty("buffer_get_string_ptr", "/usr/sbin/sshd")),  # fortify
    ("/usr/bin/firefox", 0, Guilty("??? (+0x11d3)", "/usr/lib64/firefox/libxul.so")),  # stripped: the first unknown
])
def test_guilty_frames_of_real_crash_shapes(program, stack, expected):
    assert guilty_of(program, stack) == expected


def test_guilty_order_of_preference():
    def stack(*frames: Frame) -> Stack:
        return Stack(Domain.CRASH, "/bin/p", frames)

    lib = "/lib/libx.so"
    unknown = Frame(None, lib, 0x10)
    assert choose_guilty(stack(unknown, Frame("abort", LIBC), Frame("f", lib)), CRASH) == Guilty("f", lib)
    assert choose_guilty(stack(Frame("abort", LIBC), unknown), CRASH) == Guilty("??? (+0x10)", lib)
    assert choose_guilty(stack(Frame("raise", LIBC), Frame("abort", LIBC)), CRASH) == Guilty("raise", LIBC)
    assert choose_guilty(stack(Frame(None, None)), CRASH) == Guilty("(no symbols)", "")
    assert choose_guilty(stack(), CRASH) == Guilty(NO_BACKTRACE, "/bin/p")
    kernel = Stack(Domain.KERNEL, "kernel", (Frame("? a", "kernel"),), "")
    assert choose_guilty(kernel, KERNEL).function == "? a"
    guessed = Stack(Domain.KERNEL, "kernel", (Frame("a", "kernel", unreliable=True), Frame("b", "kernel")))
    assert choose_guilty(guessed, KERNEL) == Guilty("b", "kernel")  # a reliable frame beats a guess
    only_guesses = Stack(Domain.KERNEL, "kernel", (Frame("dump_stack", "kernel", unreliable=True),
                                                  Frame("a", "kernel", unreliable=True)))
    assert choose_guilty(only_guesses, KERNEL) == Guilty("a", "kernel")


def test_stub_and_non_reports():
    stub = crashes.stack_of(crash_stub("/usr/bin/sudo"))
    assert stub is not None and stub.frames == ()
    assert choose_guilty(stub, CRASH) == Guilty(NO_BACKTRACE, "/usr/bin/sudo")
    assert crashes.stack_of("Crash from third party\n") is None
    assert crashes.stack_of("") is None


def test_crash_frame_forms():
    payload = ("Process: /bin/p\nPID: 1\n\nBacktrace (TID 1):\n"
               "#0 (no symbols) at 0xdead0000\n"
               "#1 ??? - [/lib/a b.so]\n"
               "#2 shapes::Box<int>::open(int) const - [/bin/p] - /src/x.cc:3 (inlined)\n"
               "    mangled: _ZNK6shapes3BoxIiE4openEi\n"
               "#3 main() - [/bin/p] - /src/x.cc:9\n"
               "#4 odd] name() - [/lib/[weird]/x.so] (+0x10)\n"
               "Backtrace stopped: stack memory is not in the core\n")
    stack = crashes.stack_of(payload)
    assert stack is not None
    assert stack.frames == (
        Frame(None, None), Frame(None, "/lib/a b.so"), Frame("shapes::Box<int>::open(int) const", "/bin/p"),
        Frame("main", "/bin/p"), Frame("odd] name", "/lib/[weird]/x.so", 0x10),
    )
    assert crashes.display_lines(payload)[2].startswith("#2 shapes::Box")
    assert not any("mangled" in line for line in crashes.display_lines(payload))


@given(st.text(max_size=2000))
def test_any_payload_parses_or_is_refused(text):
    stack = crashes.stack_of(text)
    if stack is not None:
        choose_guilty(stack, CRASH)
        assert all("\t" not in (f.function or "") and "\n" not in (f.module or "") for f in stack.frames)
    kernel = oopses.stack_of(text)
    if kernel is not None:
        choose_guilty(kernel, KERNEL)


# --- kernel oopses --------------------------------------------------------------------------

def test_oops_stacks_from_real_logs():
    found = {}
    for classification, _, payload in oops_reports():
        stack = oopses.stack_of(payload)
        assert stack is not None and stack.domain is Domain.KERNEL
        found.setdefault(choose_guilty(stack, KERNEL).label(), classification)
    # a warning's own function, ahead of dump_stack and warn_slowpath_*
    assert found["preempt_notifier_register - [kernel]"] == "org.clearlinux/kernel/warning"
    assert found["dev_watchdog - [kernel]"] == "org.clearlinux/kernel/warning"
    assert "nv_kern_open - [kernel]" in found  # the first frame the unwinder was sure of
    # no frames: grouped by the reason, numbers masked
    assert "BUG: Bad page map in process nemo  pte:N pmd:N" in found
    assert not any(label.startswith(("dump_stack", "warn_slowpath")) for label in found)


def test_oops_function_names():
    payload = ("Crash Report:\nReason: BUG: unable to handle kernel NULL pointer dereference at 0000000000000008\n"
               "Backtrace :\n#1 ? dump_stack - [kernel]\n#2 do_ipv6_setsockopt.isra.6 - [kernel]\n"
               "#3 ======================= - [kernel]\n#4 foo.cold - [kernel]\n")
    stack = oopses.stack_of(payload)
    assert stack is not None
    assert [f.function for f in stack.frames] == ["dump_stack", "do_ipv6_setsockopt", "foo"]
    assert stack.frames[0].unreliable
    assert choose_guilty(stack, KERNEL) == Guilty("do_ipv6_setsockopt", "kernel")
    assert oopses.stack_of("hello\n") is None


# --- the never-guilty list -------------------------------------------------------------------

def test_entries():
    assert Entry.parse("  abort ") == Entry("abort")
    assert Entry.parse("free [libc.so.6]") == Entry("free", "libc.so.6")
    assert Entry.parse("operator[](int)") == Entry("operator[](int)")  # brackets of a C++ name
    for bad in ("", " [x]", "a []", "x" * 300, "a\x1bb"):
        with pytest.raises(NeverGuiltyError):
            Entry.parse(bad)


def test_matching():
    never = NeverGuilty.parse("abort\n__GI_*\nfree [libc.so.6]\nwrap [/opt/*/lib.so]\n# comment\n\n")
    assert never.matches(Frame("abort", LIBC)) and never.matches(Frame("__GI_raise", LIBC))
    assert not never.matches(Frame("xabort", LIBC)) and not never.matches(Frame("abort_x", LIBC))
    assert never.matches(Frame("free", LIBC)) and not never.matches(Frame("free", "/usr/lib/libjemalloc.so"))
    assert never.matches(Frame("wrap", "/opt/a/lib.so")) and not never.matches(Frame("wrap", "/lib.so"))
    assert not never.matches(Frame(None, LIBC))  # an unknown frame is never on the list
    assert NeverGuilty.parse("a.b\n").matches(Frame("a.b", "m")) and not NeverGuilty.parse("a.b").matches(Frame("axb", "m"))
    assert NeverGuilty.parse("operator[]").matches(Frame("operator[]", "m"))
    assert NeverGuilty.parse("abort\nabort\n").texts() == ["abort"]
    with pytest.raises(NeverGuiltyError, match="line 2"):
        NeverGuilty.parse("ok\n [x]\n")


def test_plain_names():
    assert plain_name("abort()") == "abort"
    assert plain_name("std::terminate()") == "std::terminate"
    assert plain_name("ns::f(int) const") == "ns::f(int) const"
    assert plain_name("f(g())") == "f(g())"


def test_shipped_lists_parse():
    assert len(default_list(Domain.CRASH).entries) == len(set(DEFAULT_CRASH))
    assert len(default_list(Domain.KERNEL).entries) == len(set(DEFAULT_KERNEL))


@given(st.lists(st.sampled_from(["abort", "raise", "free", "f", "g", "__GI_x", "h"]), max_size=12),
       st.lists(st.sampled_from(["abort", "raise", "f", "g", "__GI_*", "h"]), max_size=6))
def test_guilty_is_the_first_frame_off_the_list(names, entries):
    frames = tuple(Frame(n, LIBC) for n in names)
    never = NeverGuilty.from_texts(entries)
    guilty = choose_guilty(Stack(Domain.CRASH, "/bin/p", frames), never)
    off = [f for f in frames if not never.matches(f)]
    if off:
        assert guilty == Guilty(off[0].function or "", LIBC)
    elif frames:
        assert guilty == Guilty(frames[0].function or "", LIBC)
    else:
        assert guilty.function == NO_BACKTRACE
    # adding the guilty frame's function to the list moves the group on, or keeps it if nothing else is left
    if off:
        again = choose_guilty(Stack(Domain.CRASH, "/bin/p", frames), NeverGuilty.from_texts([*entries, guilty.function]))
        assert again != guilty or all(f.function == guilty.function or never.matches(f) for f in frames)


# --- stacks as stored -------------------------------------------------------------------------

frames_st = st.lists(st.builds(
    Frame,
    function=st.one_of(st.none(), st.text(min_size=1, max_size=30).filter(lambda t: t.isprintable())),
    module=st.one_of(st.none(), st.text(max_size=30).filter(lambda t: t.isprintable())),
    offset=st.one_of(st.none(), st.integers(0, 2**48)),
    unreliable=st.booleans(),
), max_size=10).map(tuple)


@given(frames_st)
def test_frames_round_trip(frames):
    assert frames_from_text(frames_text(frames)) == frames


@given(frames_st, frames_st)
def test_signature_is_the_stack(a, b):
    sa, sb = Stack(Domain.CRASH, "/p", a), Stack(Domain.CRASH, "/p", b)
    assert (sa.signature == sb.signature) == (frames_text(a) == frames_text(b))
    assert sa.signature != Stack(Domain.KERNEL, "/p", a).signature


def test_source_lines_do_not_split_groups():
    moved = crash_payload("/usr/bin/vim", PROGRAMS["/usr/bin/vim"][0]).replace("alloc.c:612", "alloc.c:640")
    assert crashes.stack_of(moved) == crashes.stack_of(crash_payload("/usr/bin/vim", PROGRAMS["/usr/bin/vim"][0]))


# --- parsers and the counts of a batch ---------------------------------------------------------

def test_parser_checks_and_matching():
    assert matches(("org.clearlinux/crash/*",), "org.clearlinux/crash/clr")
    assert not matches(("org.clearlinux/crash/*",), "org.clearlinux/crashes/x")
    assert matches(("a/b/c",), "a/b/c") and not matches(("a/b/c",), "a/b/cd")
    assert check(MCE, "mce") is MCE

    class Bad:
        name = "Bad Name"
        classifications = ("x/y/z",)

        def parse(self, record):
            return []

    with pytest.raises(ParserError, match="name"):
        check(Bad(), "bad")
    assert fact_ok(Fact("Bad Name", "v")) is None
    assert fact_ok(Fact("status", "a\x1b" + "b" * 300)) == Fact("status", "a?" + "b" * 198)


def test_mce_facts():
    r = record("org.clearlinux/mce/corrected", mce_payload(3, 7, "8c00004000010091", "MEMORY CONTROLLER RD_CHANNEL1_ERR", 1),
               received=0, machine="m1")
    assert set(MCE.parse(r)) == {Fact("kind", "corrected"), Fact("machine", "m1"), Fact("bank", "7"),
                                 Fact("status", "0x8c00004000010091"), Fact("error", "MEMORY CONTROLLER RD_CHANNEL1_ERR"),
                                 Fact("socket", "1")}
    assert set(MCE.parse(record("org.clearlinux/mce/SRAO", "garbage", received=0, machine="m"))) == {
        Fact("kind", "SRAO"), Fact("machine", "m")}


def test_batch_counts():
    day = 86400
    records = with_ids([
        record("org.clearlinux/hello/world", "hi", received=10 * day + 5, machine="a", build="100"),
        record("org.clearlinux/hello/world", "hi", received=10 * day + 7200, machine="a", build="100"),
        record("org.clearlinux/crash/clr", crash_payload("/usr/bin/vim", PROGRAMS["/usr/bin/vim"][0]),
               received=11 * day, machine="b", build="101"),
    ])
    stack = crashes.stack_of(records[2].record.payload)
    assert stack is not None
    deltas = counts.count(records, [Parsed(records[2], "crash", [stack, Fact("x", "1")])])
    assert deltas.hours == {240: counts.HourSpan(1, 1, 1), 242: counts.HourSpan(2, 2, 1), 264: counts.HourSpan(3, 3, 1)}
    assert deltas.tallies[(RECORD_SOURCE, "build", 10, "100")] == counts.Tally(2, 1)
    assert deltas.tallies[(RECORD_SOURCE, "classification", 11, "org.clearlinux/crash/clr")] == counts.Tally(1, 3)
    assert deltas.tallies[("crash", "x", 11, "1")] == counts.Tally(1, 3)
    assert deltas.sightings == [{("100", "a"): 10, ("101", "b"): 11}]
    assert [c.record_id for c in deltas.crashes] == [3]
    assert list(deltas.stacks) == [stack.signature]
    assert list(deltas.tallies) == sorted(deltas.tallies)  # locked in one order by every worker


@given(st.lists(st.tuples(st.integers(0, 5 * 86400), st.sampled_from("abc"), st.sampled_from(["1", "2"])),
                min_size=1, max_size=40))
def test_counts_add_up(rows):
    records = with_ids([record("x/y/z", "", received=t, machine=m, build=b) for t, m, b in sorted(rows)])
    deltas = counts.count(records)
    assert sum(h.records for h in deltas.hours.values()) == len(records)
    for name in ("build", "classification", "platform"):
        assert sum(t.records for k, t in deltas.tallies.items() if k[1] == name) == len(records)
    seen = {(b, m, t // 86400) for t, m, b in rows}
    assert sum(len(r) for r in deltas.sightings) == len(seen)
    for earlier, later in zip(deltas.sightings, deltas.sightings[1:], strict=False):
        assert all(later[k] > earlier[k] for k in later)  # rounds go forward in time


def test_gaps():
    assert gap_after(None, 5) is None
    assert gap_after(4, 5) is None and gap_after(5, 5) is None and gap_after(6, 5) is None
    assert gap_after(2, 6) == (3, 5)
