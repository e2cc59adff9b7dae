"""The oops parser over every real kernel log in testdata/oops, plus its edge cases.

Expected values are the original's (spec/probes.md, section 4) except where noted: the
end line of an oops starts the next one (two_warnings.txt), and frames written without
their indent are kept (kernel_bug_at.txt, nologlevel_notimestamp.txt).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry.probes import oops as O

TESTDATA = Path(__file__).resolve().parents[1] / "data" / "oops"

KW = "org.clearlinux/kernel/warning"
KB = "org.clearlinux/kernel/bug"


def read_lines(name: str) -> list[str]:
    text = (TESTDATA / name).read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


# file: [(reason, class, severity, kernel version, tainted, frames, registers, modules?)]
EXPECTED: dict[str, list[tuple]] = {
    "watchdog.txt": [("WARNING: at net/sched/sch_generic.c:255 dev_watchdog+0x238/0x250", KW, 2,
                      "3.10.4-100.fc18.x86_64 #1", "Not tainted", 21, 0, True)],
    "ALSA.txt": [("ALSA sound/core/pcm_lib.c:154: BUG: stream = 1, pos = 0x1138, buffer size = 0x1138, "
                  "period size = 0x44e", "crash/kernel/bug", 2, "2.6.25-14.fc9.i686 #1", "Not tainted", 11, 0,
                  False)],
    "warning.txt": [("WARNING: CPU: 1 PID: 796 at kernel/sched/core.c:2342 preempt_notifier_register+0x30/0x70",
                     KW, 2, "4.2.0-rc2-satori #1", "G        W  OE  ", 13, 0, True)],
    "loglevel_notimestamp.txt": [("WARNING: CPU: 1 PID: 796 at kernel/sched/core.c:2342 "
                                  "preempt_notifier_register+0x30/0x70", KW, 2, "4.2.0-rc2-satori #1",
                                  "G        W  OE  ", 13, 0, True)],
    "warn_on.txt": [("WARNING: CPU: 3 PID: 0 at net/sched/sch_generic.c:303 dev_watchdog+0x254/0x260", KW, 2,
                     "4.0.5-300.fc22.x86_64 #1", "Not tainted", 17, 0, True)],
    "2or3_digit_loglevel.txt": [("WARNING: CPU: 4 PID: 0 at net/sched/sch_generic.c:303 dev_watchdog+0xe8/0x158",
                                 KW, 2, "3.18.2 #12", "Not tainted", 22, 0, True)],
    "sysctl_check1.txt": [("sysctl table check failed: net/ath1/%parent  Sysctl already exists", KW, 2,
                           "2.6.26-2-686 #1", "P          2.6.2", 26, 0, False)],
    "sysctl_check2.txt": [("sysctl table check failed: net/netfilter/nf_conntrack_max .3.19.1 Missing strategy",
                           KW, 2, "2.6.32.53-bigmem-5-openvz #28", "P           ----", 14, 0, False)],
    "sysctl_check1": [],  # no end-trace line: the oops never closes
    "sysctl_check2": [],
    "soft_lockup.txt": [("BUG: soft lockup - CPU#8 stuck for 22s! [ceph-osd:12347]", KB, 4,
                         "3.16.6-200.el7.x86_64 #1", "Not tainted", 13, 27, True)],
    "RTNL.txt": [("RTNL: assertion failed at drivers/net/bonding/bond_main.c", KW, 2,
                  "3.12-trunk-amd64 #1 Debian 3.12.3-1~exp1", "Not tainted", 13, 0, False)],
    "kernel_null_pointer.txt": [("BUG: unable to handle kernel NULL pointer dereference at 0000000000000118", KB, 4,
                                 "3.7.4-204.fc18.x86_64 #1 LENOVO 27672LG/27672LG", "Not tainted", 7, 28, True)],
    "kernel_bug_at_DONE.txt": [("kernel BUG at mm/mmap.c:2156!", KB, 4, "2.6.27.56-0.1-default #1",
                                "G          2.6.2", 10, 28, True)],
    # Ours: 12 frames (the original reports 0: its frames lack the indent space).
    "kernel_bug_at.txt": [("kernel BUG at security/selinux/ss/ebitmap.h:88!", KB, 4,
                           "(2.6.32.26-175.fc12.i686.PAE #1) XPS M1330" + " " * 23, "Not tainted", 12, 0, True)],
    "irq.txt": [("irq 11: nobody cared", "crash/kernel/warning", 2, "3.10.7-100.fc18.i686.PAE #1", "Not tainted",
                 49, 0, False)],
    "general_protection_fault.txt": [("general protection fault: 0000 [#1] SMP ", KB, 4, "3.10.0-210.el7.x86_64 #1",
                                      "Not tainted", 8, 28, True)],
    "double_fault.txt": [("double fault: 0000 [#3] SMP ", KB, 4, "2.6.31.5-127.fc12.x86_64 #1 Latitude E6430",
                          "P      D    2.6.", 0, 28, True)],
    "double_fault_DONE.txt": [("double fault: 0000 [1] SMP ", KB, 4,
                               "2.6.27.37-170.2.104.fc10.x86_64 #1 AMILO Pi 3525", "Not tainted", 0, 28, True)],
    "bad_page_map.txt": [("BUG: Bad page map in process nemo  pte:00010000 pmd:6ade7067", KB, 4,
                          "3.12-1-amd64 #1 Debian 3.12.9-1", "Not tainted", 0, 0, False)],
    "bug_kernel_handle.txt": [("BUG: unable to handle kernel paging request at 0000000000002658", KB, 4,
                               "3.7.9-201.fc18.x86_64 #1 Apple Inc. MacBookPro6,2/Mac-F22586C8", "PF          O 3.",
                               23, 28, True)],
    "bug_kernel_handle_new.txt": [("BUG: unable to handle kernel paging request at 0000000000002658", KB, 4,
                                   "3.7.9-201.fc18.x86_64 #1 Apple Inc. MacBookPro6,2/Mac-F22586C8",
                                   "PF          O 3.", 23, 28, True)],
    "badness.txt": [("Badness at drivers/char/tty_ldisc.c:738", KB, 4, None, None, 0, 0, False)],
    # Ours: 16 frames (the original: 0, same cause as kernel_bug_at.txt).
    "nologlevel_notimestamp.txt": [("BUG: unable to handle kernel ", KB, 4, "(2.6.32-5-686 #1) VirtualBox",
                                    "Not tainted", 16, 0, True)],
    # Ours: the second warning is reported too (the original drops the line that starts it).
    "two_warnings.txt": [
        ("WARNING: strange, CPU MTRRs all blank?", KW, 2, None, None, 0, 0, False),
        ("WARNING: at arch/x86/kernel/cpu/mtrr/main.c:696 mtrr_trim_uncached_memory+0x190/0x195", KW, 2,
         "2.6.25-14.fc9.i686 #1", "Not tainted", 11, 0, False),
    ],
}


def test_every_testdata_file_has_expectations():
    assert sorted(p.name for p in TESTDATA.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_testdata_file(name):
    events = O.parse_lines(read_lines(name))
    assert len(events) == len(EXPECTED[name])
    for event, (reason, cls, sev, version, tainted, nframes, nregs, has_modules) in zip(
        events, EXPECTED[name], strict=True
    ):
        assert event.reason == reason
        assert (event.classification, event.severity) == (cls, sev)
        report = O.analyse(event)
        assert report.kernel_version == version
        assert report.tainted == tainted
        assert len(report.frames) == nframes
        assert len(report.registers) == nregs
        assert (report.modules is not None) == has_modules
        assert all(f.module == "kernel" for f in report.frames)
        payload = O.oops_payload(event)
        assert payload.startswith(f"Crash Report:\nReason: {reason}\n")
        assert ("Backtrace :\n" in payload) == (nframes > 0)
        assert payload.endswith("\n")


def test_watchdog_payload_in_full_layout():
    (event,) = O.parse_lines(read_lines("watchdog.txt"))
    lines = O.oops_payload(event).split("\n")
    assert lines[:4] == [
        "Crash Report:",
        "Reason: WARNING: at net/sched/sch_generic.c:255 dev_watchdog+0x238/0x250",
        "Kernel Version : 3.10.4-100.fc18.x86_64 #1",
        "Tainted : Not tainted",
    ]
    assert lines[4].startswith("Modules : ebtable_nat fuse ipt_MASQUERADE")
    assert lines[5] == "Backtrace :"
    assert lines[6] == "#1 dump_stack - [kernel]"
    assert lines[9] == "#4 ? __queue_work - [kernel]"
    assert lines[26] == "#21 start_secondary - [kernel]"
    assert lines[27:] == [""]


def test_alsa_junk_frame_and_registers_order():
    (alsa,) = O.parse_lines(read_lines("ALSA.txt"))
    assert O.analyse(alsa).frames[-1].function == "======================="
    (npd,) = O.parse_lines(read_lines("kernel_null_pointer.txt"))
    regs = [r.name for r in O.analyse(npd).registers]
    # log order, right to left within a line; GS/knlGS lost after FS:…(0000), parse stops at DS
    assert regs[:5] == ["EFLAGS", "RSP", "RCX", "RBX", "RAX"]
    assert "GS" not in regs and "knlGS" not in regs and "CR0" not in regs
    assert regs.index("FS") < regs.index("CS") < regs.index("CR4")


def test_raw_registers_with_privacy_override():
    event = O.Oops(O.PATTERNS[8], ("BUG: x", "RAX: 00000000000000ff RBX: 0000000000000000"), O.EndReason.FLUSHED)
    assert "Register RBX: Zero\nRegister RAX: Non-zero\n" in O.oops_payload(event)
    assert "Register RBX: 0\nRegister RAX: ff\n" in O.oops_payload(event, raw_registers=True)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("RSP: 0018:0000000043e3d18  EFLAGS: 00010292", [("RSP", 0x43E3D18), ("EFLAGS", 0x10292)]),
        ("FS:  00007f5e7cab1700(0000) GS:ffff88014b240000(0000) knlGS:0", [("FS", 0x7F5E7CAB1700)]),
        (" RSP <ffff9900628f3e40>", [("RSP", 0x7FFFFFFFFFFFFFFF)]),  # strtoll saturates
        ("RIP: 0010:[<ffffffffc00b7012>]  [<ffffffffc00b7012>] my_oops_init+0x12/0x1000", []),
        ("RAX: -1", [("RAX", 0xFFFFFFFFFFFFFFFF)]),
        ("RAX: 12zz RBX: 1", []),
        ("CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033", [("CS", 0x10)]),
        ("rbx: 1", [("RBX", 1)]),
        ("", []),
    ],
)
def test_parse_registers(line, expected):
    assert [(r.name, r.value) for r in O.parse_registers(line)] == expected


@pytest.mark.parametrize(
    "line, version, tainted",
    [
        ("CPU: 2 PID: 0 Comm: swapper/2 Not tainted  3.10.4-100.fc18.x86_64 #1", "3.10.4-100.fc18.x86_64 #1",
         "Not tainted"),
        ("CPU: 2 PID: 6429 Comm: insmod Tainted: P           OE  3.19.0-18-generic #18-Ubuntu",
         "3.19.0-18-generic #18-Ubuntu", "P           OE  "),
        ("CPU: 0 PID: 1 Comm: init Tainted: G", None, "G"),
        ("PID: 1 Comm: a#b Not tainted 6.1 #1", "6.1 #1", "Not tainted"),
        ("CPU: 0 PID: 1", None, None),
    ],
)
def test_parse_cpu_line(line, version, tainted):
    assert O.parse_cpu_line(line) == (version, tainted)


MODERN = """\
[  100.000001] ------------[ cut here ]------------
[  100.000002] WARNING: CPU: 0 PID: 1 at drivers/foo.c:10 foo_probe+0x12/0x30 [foo]
[  100.000003] Modules linked in: foo(O) bar
[  100.000004] CPU: 0 PID: 1 Comm: modprobe Tainted: G           O       6.5.0-1 #1
[  100.000005] Hardware name: QEMU Standard PC (Q35 + ICH9, 2009)
[  100.000006] RIP: 0010:foo_probe+0x12/0x30 [foo]
[  100.000007] Code: 48 89 e5 <0f> 0b 5d c3
[  100.000008] RSP: 0018:ffffb0c1c0013c28 EFLAGS: 00010246
[  100.000009] RAX: 0000000000000000 RBX: ffff9a3f
[  100.000010] Call Trace:
[  100.000011]  <TASK>
[  100.000012]  ? show_regs+0x6d/0x80
[  100.000013]  ? __warn+0x89/0x160
[  100.000014]  foo_probe+0x12/0x30 [foo]
[  100.000015]  do_one_initcall+0x5b/0x340
[  100.000016]  </TASK>
[  100.000017] ---[ end trace 0000000000000000 ]---
[  100.000018] foo: next message
"""


def test_modern_kernel_task_markers_keep_the_frames():
    (event,) = O.parse_lines(MODERN.splitlines())
    report = O.analyse(event)
    assert [f.function for f in report.frames] == ["? show_regs", "? __warn", "foo_probe", "do_one_initcall"]
    assert report.kernel_version == "6.5.0-1 #1"
    assert report.tainted == "G           O   "
    assert report.modules == "foo(O) bar"
    assert [r.name for r in report.registers] == ["EFLAGS", "RSP", "RBX", "RAX"]


def test_line_ending_a_stack_starts_the_next_oops():
    lines = ["BUG: first", "Call Trace:", "  f1+0x1/0x2", "BUG: scheduling while atomic", "Call Trace:",
             "  g+0x1/0x2", "---[ end trace 1 ]---", "BUG: not reported: end trace lines are dropped"]
    a, b = O.parse_lines(f"[ 1.0] {line}" for line in lines)
    assert (a.reason, a.ended_by) == ("BUG: first", O.EndReason.STACK_END)
    assert (b.reason, b.ended_by) == ("BUG: scheduling while atomic", O.EndReason.END_TRACE)
    assert [f.function for f in O.analyse(b).frames] == ["g"]


def test_back_to_back_warnings_are_two_reports():
    lines = ["WARNING: at a.c:1 f+0x1/0x2", "Modules linked in: x", "WARNING: at b.c:2 g+0x1/0x2",
             "---[ end trace 2 ]---"]
    events = O.parse_lines(lines)
    assert [e.reason for e in events] == ["WARNING: at a.c:1 f+0x1/0x2", "WARNING: at b.c:2 g+0x1/0x2"]
    assert [e.ended_by for e in events] == [O.EndReason.NEXT_OOPS, O.EndReason.END_TRACE]


def test_alsa_is_not_ended_by_a_warning_line():
    events = O.parse_lines(["ALSA x.c:1: BUG: y", "WARNING: inside", "---[ end trace 1 ]---"])
    assert len(events) == 1 and events[0].lines == ("ALSA x.c:1: BUG: y", "WARNING: inside")


def test_bert_payload_is_verbatim():
    lines = [
        "<6>[    1.0] BERT: Error records from previous boot:",
        "<6>[    1.0] [Hardware Error]: event severity: fatal",
        "<6>[    1.0] [Hardware Error]:  Error 0, type: fatal",
        "<6>[    1.0] next boot message",
    ]
    (event,) = O.parse_lines(lines)
    assert event.classification == "org.clearlinux/bert/debug" and event.severity == 2
    assert O.oops_payload(event) == (
        "Crash Report:\nReason: BERT: Error records from previous boot:\n"
        "[Hardware Error]: event severity: fatal\n[Hardware Error]:  Error 0, type: fatal\n"
    )


def test_panic_and_acpi_patterns():
    assert O.match_start("Kernel panic - not syncing: Fatal exception").classification == "org.clearlinux/kernel/panic"
    assert O.match_start("ACPI Error: foo").severity == 2
    assert O.match_start("IRQ 7: NOBODY CARED (try booting with the irqpoll option)") is not None  # REG_ICASE
    assert O.match_start(" WARNING: indented twice") is None  # prefix patterns anchor at the start
    assert O.match_start("do_IRQ: stack overflow: 300").classification == "org.clearlinux/kernel/stackoverflow"


def test_max_lines_ends_the_oops():
    lines = ["BUG: x"] + [f"line {i}" for i in range(150)]
    parser = O.OopsParser()
    events = parser.feed_all(lines)
    assert len(events) == 1 and len(events[0].lines) == O.MAX_LINES
    assert events[0].ended_by is O.EndReason.MAX_LINES
    assert not parser.open


def test_finish_flushes_an_open_oops_and_nothing_otherwise():
    parser = O.OopsParser()
    assert parser.feed("Kernel panic - not syncing: Fatal exception") == []
    assert parser.open
    event = parser.finish()
    assert event is not None and event.ended_by is O.EndReason.FLUSHED
    assert parser.finish() is None


def test_normalise():
    assert O.normalise("<4>[ 12.345]  x") == " x"
    assert O.normalise("<340>abc") == "abc"
    assert O.normalise("<4 no close") == ""
    assert O.normalise("[no close") == ""
    assert O.normalise("\tx") == "x"


def test_frame_only_address_token_is_not_a_frame():
    assert O.parse_frame(" [<ffffffff81000000>]") is None
    assert O.parse_frame(" <IRQ>") is None
    assert O.parse_frame(" <IRQ>  [<ffffffff816606a8>] dump_stack+0x19/0x1b") == O.Frame("dump_stack")
    assert O.parse_frame(" [<c0476e49>] ? set_fail+0x49/0x50") == O.Frame("? set_fail")


def test_decode_line_is_payload_safe():
    assert O.decode_line(b"ok \xff\x01\tend") == "ok \ufffd?\tend"


# --- properties -----------------------------------------------------------------------

kernelish = st.one_of(
    st.sampled_from(
        ["WARNING: at x", "BUG: y", "Call Trace:", " f+0x1/0x2", " <TASK>", "---[ end trace 1 ]---", "Code: 00",
         "RAX: 1 RBX: 0", "CPU: 0 PID: 1 Comm: a Not tainted 1.0 #1", "Modules linked in: a", "ALSA a: BUG: b",
         "BERT: Error records from previous boot:", "[Hardware Error]: x", "", " ", "<4>[ 1.0] BUG: z"]
    ),
    st.text(max_size=60),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(kernelish, max_size=250))
def test_parser_properties(lines):
    parser = O.OopsParser()
    events = parser.feed_all(lines)
    tail = parser.finish()
    starts = sum(1 for line in lines if O.match_start(O.normalise(line)) is not None)
    assert len(events) + (tail is not None) <= starts
    for e in events + ([tail] if tail else []):
        assert 1 <= len(e.lines) <= O.MAX_LINES
        assert O.match_start(e.reason) is e.pattern
        payload = O.oops_payload(e)
        assert payload.startswith("Crash Report:\nReason: ")
        O.oops_payload(e, raw_registers=True)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_register_and_cpu_parsers_never_fail(line):
    for r in O.parse_registers(line):
        assert r.name in O.REGISTERS and 0 <= r.value < 2**64
    O.parse_cpu_line(line)
    O.parse_frame(line)


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_strtoll16_saturates_like_c(n):
    text = ("-" if n < 0 else "") + format(abs(n), "x")
    expected = max(min(n, 2**63 - 1), -(2**63)) % 2**64
    assert O.strtoll16(text, 0) == (expected, len(text))


# --- forged reports: lines the kernel prints about a user process -------------------------

def kmsg_escaped(comm: bytes) -> str:
    """comm as /dev/kmsg prints it: control bytes, bytes >= 0x7f and the backslash as \\xNN."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in comm)


# What the kernel prints when a process without a handler faults or traps, %s being comm.
PROCESS_LINES = (
    "{comm}[4242]: segfault at 0 ip 00007f0000001000 sp 00007ffc00000000 error 4 in libc.so.6[1000,7f0000000000+1000]"
    " likely on CPU 1 (core 1, socket 0)",
    "{comm}[4242] trap int3 ip:55d1a2b3c4d5 sp:7ffc00000000 error:0 in prog[1000,55d1a2b3c000+1000]",
    "traps: {comm}[4242] general protection fault ip:7f00 sp:7ffc error:0 in libc.so.6[7f00+1000]",
    "{comm} (4242): drop_caches: 1",
)


@pytest.mark.parametrize("comm", ["BUG: x", "WARNING: x", "kernel BUG at x", "Badness", "double fault",
                                  "ACPI Error: x", "ALSA x: BUG y", "irq 5: nobody c", "BUG:"])
@pytest.mark.parametrize("shape", PROCESS_LINES)
def test_a_process_name_never_starts_a_report(comm, shape):
    line = shape.format(comm=comm)
    assert O.names_a_process(line)
    assert O.match_start(line) is None
    assert O.parse_lines([f"<6>[  12.345678] {line}", "Call Trace:", " f+0x1/0x2", "next"], flush=True) == []


def test_a_process_line_does_not_end_a_real_report_early():
    real = ["BUG: unable to handle page fault for address: 0000000000001000", "#PF: supervisor read access",
            "WARNING: x[7]: segfault at 0 ip 0 sp 0 error 4 in x[1000,0+1000]", "Call Trace:", " f+0x1/0x2",
            "---[ end trace 0000000000000000 ]---"]
    (oops,) = O.parse_lines(f"<4>[ 1.0] {line}" for line in real)
    assert oops.classification == O.K_BUG and oops.ended_by is O.EndReason.END_TRACE


def test_the_irq_pattern_is_anchored():
    line = "x[1]: segfault at 0 ip 0 sp 0 error 4 in irq 5: nobody cared[1000,0+1000]"
    assert O.match_start(line) is None
    assert O.match_start("irq 16: nobody cared (try booting with the \"irqpoll\" option)") is not None


@settings(max_examples=300, deadline=None)
@given(comm=st.binary(min_size=1, max_size=O.COMM_MAX).filter(lambda b: b"\x00" not in b),
       shape=st.sampled_from(PROCESS_LINES), pid=st.integers(1, 2**22))
def test_no_process_name_is_a_report(comm, shape, pid):
    """Any name a process can give itself, printed as /dev/kmsg prints it."""
    line = shape.format(comm=kmsg_escaped(comm)).replace("4242", str(pid))
    assert O.match_start(line) is None


@pytest.mark.parametrize("line", [
    "BUG: unable to handle kernel paging request at 0000000000002658",
    "BUG: soft lockup - CPU#8 stuck for 22s! [ceph-osd:12347]",
    "BUG: using smp_processor_id() in preemptible [00000000] code: x/123",
    "general protection fault: 0000 [1] SMP",
    "double fault: 0000 [1] SMP",
    "WARNING: CPU: 3 PID: 0 at net/sched/sch_generic.c:303 dev_watchdog+0x254/0x260",
    "BUG: scheduling while atomic: swapper/0/0/0x00000002",
])
def test_the_kernels_own_report_lines_still_start_reports(line):
    assert not O.names_a_process(line) and O.match_start(line) is not None
