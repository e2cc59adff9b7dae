"""Records for the web views' tests and benchmark, with the payloads the real probes send.

Crash reports are laid out by crashprobe's own payload code (`probes/crash/payload.py`)
from stacks of a few dozen programs, shaped as real crashes of them are (glibc's abort and
malloc checks, assertions, C++ terminate, Rust panics, Go's signal path, stripped
libraries); kernel oopses are klogscanner's payloads of the kernel logs in
tests/data/oops; MCE events are mcelog's reports.  `store_records` stores records through
the collector's own ingest hook (the write path's), with the reception times the test
chooses, which HTTP cannot give.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from telemetry.probes import oops
from telemetry.probes.crash.analyze import Analysis, Frame, ThreadTrace
from telemetry.probes.crash.lines import SourceLine
from telemetry.probes.crash.payload import Header, backtrace_payload, stub_payload
from telemetry.probes.crash.unwind import StopReason
from telemetry_collector.dburl import parse_database_url
from telemetry_collector.derive.hook import IngestHook
from telemetry_collector.model import COLUMNS, NewRecord, StoredRecord
from telemetry_collector.store import Store, open_store

OOPS_DIR = Path(__file__).resolve().parents[1] / "data" / "oops"
LIBC = "/usr/lib64/libc.so.6"
DAY = 86400

# (function, module, source) from the innermost frame; None as function: no symbol.
Spec = tuple[str | None, str, str | None]

ABORT = [("raise", LIBC, None), ("abort", LIBC, None)]
MALLOC_CHECK = [*ABORT, ("__libc_message", LIBC, None), ("malloc_printerr", LIBC, None), ("_int_free", LIBC, None),
                ("free", LIBC, None)]
ASSERT = [*ABORT, ("__assert_fail_base", LIBC, None), ("__assert_fail", LIBC, None)]
GLIB = "/usr/lib64/libglib-2.0.so.0"
G_ASSERT = [*ABORT, ("g_assertion_message", GLIB, None), ("g_assertion_message_expr", GLIB, None)]
CXX = "/usr/lib64/libstdc++.so.6"
TERMINATE = [*ABORT, ("__gnu_cxx::__verbose_terminate_handler()", CXX, None), ("std::terminate()", CXX, None),
             ("__cxa_throw", CXX, None)]

# A few dozen programs, each with the stacks its crashes show (innermost first; main and
# the C library's start follow every one).
PROGRAMS: dict[str, list[list[Spec]]] = {
    "/usr/bin/gnome-shell": [
        [*G_ASSERT, ("meta_window_actor_queue_destroy", "/usr/lib64/libmutter-12.so.0", "src/compositor/meta-window-actor.c:1012"),
         ("meta_window_unmanage", "/usr/lib64/libmutter-12.so.0", None)],
        [("st_widget_get_theme_node", "/usr/lib64/gnome-shell/libst-12.so", "src/st/st-widget.c:640"),
         ("st_label_paint", "/usr/lib64/gnome-shell/libst-12.so", None)],
    ],
    "/usr/bin/vim": [
        [*MALLOC_CHECK, ("vim_free", "/usr/bin/vim", "src/alloc.c:612"), ("ex_bunload", "/usr/bin/vim", "src/ex_docmd.c:5290")],
    ],
    "/usr/bin/python3.11": [
        [(None, "/usr/lib/python3.11/site-packages/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so", None),
         ("_PyObject_MakeTpCall", "/usr/lib64/libpython3.11.so.1.0", None),
         ("_PyEval_EvalFrameDefault", "/usr/lib64/libpython3.11.so.1.0", None)],
        [*ABORT, ("fatal_error_exit", "/usr/lib64/libpython3.11.so.1.0", "Python/pylifecycle.c:2735"),
         ("_Py_FatalErrorFunc", "/usr/lib64/libpython3.11.so.1.0", None)],
    ],
    "/usr/bin/Xorg": [
        [("__memmove_avx_unaligned_erms", LIBC, None), ("fbBlt", "/usr/lib64/xorg/modules/libfb.so", None),
         ("fbCopyNtoN", "/usr/lib64/xorg/modules/libfb.so", None), ("miCopyRegion", "/usr/bin/Xorg", None)],
    ],
    "/usr/lib/systemd/systemd-journald": [
        [*ASSERT, ("journal_file_append_entry", "/usr/lib64/systemd/libsystemd-shared-254.so",
                   "src/libsystemd/sd-journal/journal-file.c:2301"),
         ("server_dispatch_message_real", "/usr/lib/systemd/systemd-journald", None)],
    ],
    "/usr/bin/pulseaudio": [
        [*ABORT, ("pa_assert_fail", "/usr/lib64/pulseaudio/libpulsecommon-16.1.so", None),
         ("pa_sink_input_unlink", "/usr/lib64/libpulsecore-16.1.so", "src/pulsecore/sink-input.c:701")],
    ],
    "/usr/bin/konsole": [
        [*TERMINATE, ("Konsole::Session::run()", "/usr/lib64/libkonsoleprivate.so.23", "src/session/Session.cpp:533"),
         ("Konsole::Application::newInstance()", "/usr/bin/konsole", None)],
    ],
    "/usr/bin/rg": [
        [("core::panicking::panic_fmt", "/usr/bin/rg", None), ("core::option::unwrap_failed", "/usr/bin/rg", None),
         ("grep_searcher::searcher::Searcher::search_path", "/usr/bin/rg", "crates/searcher/src/searcher/mod.rs:640"),
         ("rg::search::SearchWorker::search", "/usr/bin/rg", None)],
    ],
    "/usr/bin/containerd": [
        [("runtime.raise", "/usr/bin/containerd", None), ("runtime.dieFromSignal", "/usr/bin/containerd", None),
         ("runtime.sigpanic", "/usr/bin/containerd", None),
         ("github.com/containerd/containerd/snapshots/overlay.(*snapshotter).Mounts", "/usr/bin/containerd",
          "snapshots/overlay/overlay.go:248")],
    ],
    "/usr/bin/firefox": [
        [(None, "/usr/lib64/firefox/libxul.so", None), (None, "/usr/lib64/firefox/libxul.so", None),
         ("start_thread", LIBC, None)],
    ],
    "/usr/sbin/sshd": [
        [*ABORT, ("__fortify_fail", LIBC, None), ("__chk_fail", LIBC, None), ("__memcpy_chk", LIBC, None),
         ("buffer_get_string_ptr", "/usr/sbin/sshd", "sshbuf-getput-basic.c:88")],
    ],
    "/usr/bin/bash": [
        [("reset_terminating_signals", "/usr/bin/bash", "sig.c:508"), ("termsig_handler", "/usr/bin/bash", None)],
    ],
}
# More programs, shaped alike: a crash in the program's own code under a library call.
for name, lib in (("mpv", "libavcodec.so.60"), ("gimp-2.10", "libgimpbase-2.0.so.0"), ("inkscape", "libinkscape_base.so"),
                  ("nautilus", "libnautilus-extension.so.4"), ("evince", "libevdocument3.so.4"),
                  ("totem", "libtotem.so.0"), ("rhythmbox", "librhythmbox-core.so.10"), ("thunderbird", "libxul.so"),
                  ("libreoffice", "libmergedlo.so"), ("vlc", "libvlccore.so.9"), ("qemu-system-x86_64", "libglib-2.0.so.0"),
                  ("dockerd", "libc.so.6"), ("postgres", "libc.so.6"), ("nginx", "libc.so.6"), ("node", "libnode.so.108"),
                  ("emacs", "libgtk-3.so.0"), ("weston", "libweston-12.so.0"), ("sway", "libwlroots.so.12"),
                  ("pipewire", "libpipewire-0.3.so.0"), ("NetworkManager", "libnm.so.0"), ("cupsd", "libcups.so.2"),
                  ("dbus-daemon", "libdbus-1.so.3"), ("gdm", "libgdm.so.1"), ("swupd", "libswupd.so.0")):
    program = f"/usr/bin/{name}"
    prefix = name.split("-")[0].replace(".", "_")
    PROGRAMS[program] = [
        [(f"{prefix}_parse_buffer", program, f"src/{prefix}/parse.c:{100 + len(name)}"),
         (f"{prefix}_read", f"/usr/lib64/{lib}", None), (f"{prefix}_dispatch", program, None)],
        [*MALLOC_CHECK, (f"{prefix}_object_unref", program, f"src/{prefix}/object.c:{200 + len(name)}"),
         (f"{prefix}_dispatch", program, None)],
    ]

TAIL: list[Spec] = [("main", "", None), ("__libc_start_call_main", LIBC, None), ("__libc_start_main", LIBC, None),
                    ("_start", "", None)]


def crash_payload(program: str, stack: Sequence[Spec], *, pid: int = 4242, signal: int = 6,
                  other_thread: bool = True) -> str:
    """The report crashprobe sends for a crash of `program` in `stack`."""
    frames = []
    offset = 0x1000
    # A thread's stack starts in start_thread, the main thread's in _start.
    tail = [("clone3", LIBC, None)] if stack and stack[-1][0] == "start_thread" else TAIL
    for function, module, source in [*stack, *tail]:
        module = module or program
        offset += 0x1d3
        src = None
        if source is not None:
            path, _, line = source.rpartition(":")
            src = SourceLine(f"/builddir/build/BUILD/{path}", int(line))
        frames.append(Frame(pc=0x7F0000000000 + offset, module=module, module_offset=offset, function=function,
                            source=src))
    threads = [ThreadTrace(pid, signal, tuple(frames), StopReason.END)]
    if other_thread:
        threads.append(ThreadTrace(pid + 1, 0, (Frame(0x7F0000001000, LIBC, 0x1000, "__poll"),
                                                Frame(0x7F0000002000, LIBC, 0x2000, "start_thread")), StopReason.END))
    analysis = Analysis(pid=pid, threads=tuple(threads), error=None, executable=program, signal=signal)
    return backtrace_payload(Header(program, pid, signal), analysis)


def crash_stub(program: str, reason: str = "the kernel marked this dump unsafe (setuid, or dump mode 2)") -> str:
    return stub_payload(Header(program, 4242, 11), reason)


def oops_reports() -> list[tuple[str, int, str]]:
    """(classification, severity, payload) of every oops in the sample kernel logs."""
    out = []
    for path in sorted(OOPS_DIR.glob("*.txt")):
        lines = path.read_text(errors="replace").splitlines()
        for found in oops.parse_lines(lines, flush=True):
            out.append((found.classification, found.severity, oops.oops_payload(found)))
    return out


def mce_payload(cpu: int, bank: int, status: str, mca: str, socket: int = 0) -> str:
    return ("Hardware event. This is not a software error.\nMCE 0\n"
            f"CPU {cpu} BANK {bank} \nTIME 1700000000 Tue Nov 14 22:13:20 2023\nMCG status:\nMCi status:\n"
            f"Corrected error\nError enabled\nMCA: {mca}\nSTATUS {status} MCGSTATUS 0\n"
            f"MCGCAP 1000c14 APICID {cpu} SOCKETID {socket} \nCPUID Vendor Intel Family 6 Model 63\n")


def record(classification: str, payload: str, *, received: int, machine: str, build: str = "41000", severity: int = 1,
           platform: str = "QEMU|Standard PC (Q35 + ICH9, 2009)|pc-q35-8.2", arch: str = "x86_64",
           record_id: str | None = None) -> NewRecord:
    return NewRecord(
        record_format_version=4, severity=severity, classification=classification, machine_id=machine,
        ts_capture=received - 5, arch=arch, host_type=platform, build=build, kernel_version="6.6.10-1400.native",
        payload_format_version=1, system_name="clear-linux-os" if build.isdigit() else "debian",
        board_name="blank|blank",
        cpu_model="Intel(R) Xeon(R) CPU @ 2.20GHz", bios_version="1.16.3", event_id="0" * 32, external=False,
        payload=payload, ts_reception=received, record_id=record_id,
    )


def store_records(database: str, records: Iterable[NewRecord], *, batch: int = 500, parse: bool = True) -> int:
    """Store `records` in batches, each with the ingest hook in its transaction, as the
    collector's writer does; returns how many."""
    store = open_store(parse_database_url(database))
    hook = IngestHook.installed(parse=parse)
    n = 0
    try:
        pending: list[NewRecord] = []
        for r in records:
            pending.append(r)
            if len(pending) >= batch:
                n += _store_batch(store, hook, pending)
                pending = []
        if pending:
            n += _store_batch(store, hook, pending)
    finally:
        store.close()
    return n


_ROWS = 100  # records per INSERT statement


def _store_batch(store: Store, hook: IngestHook, batch: list[NewRecord]) -> int:
    """As the writer's transaction: the records, then the hook (records with a record id go
    in multi-row statements, which loads a benchmark's million records quicker)."""
    with store.transaction():
        stored: list[StoredRecord] = []
        if all(r.record_id is not None for r in batch):
            for i in range(0, len(batch), _ROWS):
                chunk = batch[i:i + _ROWS]
                one = "(" + ", ".join("?" * len(COLUMNS)) + ")"
                rows = store.rows(f"INSERT INTO records ({', '.join(COLUMNS)}) VALUES {', '.join([one] * len(chunk))} "
                                  "ON CONFLICT (record_id) DO NOTHING RETURNING id, record_id",
                                  [getattr(r, c) for r in chunk for c in COLUMNS])
                ids = {rid: int(n) for n, rid in rows}
                stored += [StoredRecord(ids[r.record_id], r) for r in chunk if r.record_id in ids]
        else:
            for r in batch:
                s = store.insert(r)
                if not s.duplicate:
                    stored.append(s.record)
        counters = hook.after_insert(store, stored)
        if counters:
            store.add_counters(counters)
    return len(stored)


# --- a realistic mix, for the benchmark ------------------------------------------------------

PLATFORMS = [
    "Intel Corporation|NUC8i7BEH|J72992-308", "Dell Inc.|XPS 13 9310|blank", "LENOVO|20XW0055US|ThinkPad X1 Carbon Gen 9",
    "QEMU|Standard PC (Q35 + ICH9, 2009)|pc-q35-8.2", "QEMU|Standard PC (i440FX + PIIX, 1996)|pc-i440fx-7.2",
    "Microsoft Corporation|Virtual Machine|7.0", "Google|Google Compute Engine|blank", "Amazon EC2|c5.xlarge|blank",
    "HP|HP EliteBook 840 G8 Notebook PC|blank", "ASUS|ROG Strix G15|1.0", "Supermicro|X11SPL-F|0123456789",
    "System76|Lemur Pro|lemp10", "Framework|Laptop (12th Gen Intel Core)|A6", "blank|blank|blank",
    "Intel Corporation|S2600WFT|H48104-872", "Acer|Aspire A515-56|V1.13", "MSI|MS-7C91|2.0",
    "Gigabyte Technology Co., Ltd.|B550 AORUS ELITE|blank", "VMware, Inc.|VMware7,1|None",
    "Xen|HVM domU|4.11", "innotek GmbH|VirtualBox|1.2", "Apple Inc.|MacBookPro16,1|1.0",
]
CLASSES = (  # (classification, severity, share)
    ("org.clearlinux/hello/world", 1, 0.70),
    ("org.clearlinux/journal/error", 2, 0.09),
    ("org.clearlinux/swupd/update", 1, 0.05),
    ("org.clearlinux/crash/clr", 3, 0.08),
    ("org.clearlinux/crash/error", 4, 0.005),
    ("org.clearlinux/crash/unknown", 2, 0.005),
    ("org.clearlinux/kernel/warning", 2, 0.03),
    ("org.clearlinux/kernel/bug", 4, 0.01),
    ("org.clearlinux/mce/corrected", 1, 0.01),
    ("org.clearlinux/bert/debug", 2, 0.01),
)


def realistic(n: int, *, end: int, days: int = 30, machines: int = 20_000, seed: int = 1) -> Iterator[NewRecord]:
    """`n` records received over `days` days up to `end`, in reception order: machines
    whose ids rotate every 3 days, builds that move on as machines update, crashes
    weighted towards a few programs (a long tail behind), oopses, MCE events."""
    rng = random.Random(seed)
    programs = [(program, stack) for program, stacks in PROGRAMS.items() for stack in stacks]
    weights = [1 / (i + 1) ** 0.8 for i in range(len(programs))]
    crash_texts = [crash_payload(p, s, pid=1000 + i) for i, (p, s) in enumerate(programs)]
    stubs = [crash_stub(p) for p, _ in programs[:8]]
    oopses = oops_reports()
    class_cum = []
    acc = 0.0
    for c, sev, share in CLASSES:
        acc += share
        class_cum.append((acc, c, sev))
    start = end - days * DAY
    step = days * DAY / n
    for i in range(n):
        received = int(start + i * step)
        day = (received - start) // DAY
        m = rng.randrange(machines)
        machine = f"{(m * 2654435761 + (day + m % 3) // 3) % (1 << 128):032x}"
        if m % 20 == 0:
            build = ("bookworm", "trixie", "12.4", "2024.05-rc1")[m % 4]
        else:  # a build every day; a machine updates to the latest every 5 days
            build = str(41000 + 10 * max(0, day - (day + m) % 5))
        platform = PLATFORMS[m % len(PLATFORMS)]
        x = rng.random()
        classification, severity = next(((c, sev) for cum, c, sev in class_cum if x < cum), CLASSES[0][:2])
        if classification.startswith("org.clearlinux/crash/clr"):
            payload = crash_texts[rng.choices(range(len(programs)), weights)[0]]
        elif classification == "org.clearlinux/crash/error":
            payload = stubs[rng.randrange(len(stubs))]
        elif classification == "org.clearlinux/crash/unknown":
            payload = "Crash from third party\n"
        elif classification.startswith("org.clearlinux/kernel/"):
            classification, severity, payload = oopses[rng.randrange(len(oopses))]
        elif classification.startswith("org.clearlinux/mce/"):
            payload = mce_payload(m % 8, rng.choice((0, 1, 5, 7, 9)), rng.choice(
                ("8c00004000010091", "9c000000000011a", "cc0001c000010090")), "MEMORY CONTROLLER RD_CHANNEL1_ERR")
        elif classification == "org.clearlinux/journal/error":
            payload = f"systemd[1]: Failed to start unit-{m % 50}.service.\n"
        else:
            payload = "hello\n"
        yield record(classification, payload, received=received, machine=machine, build=build, severity=severity,
                     platform=platform, record_id=f"{i:032x}")


def with_ids(records: Sequence[NewRecord]) -> list[StoredRecord]:
    return [StoredRecord(id=i + 1, record=r) for i, r in enumerate(records)]
