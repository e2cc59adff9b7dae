"""crashprobe on files built to hurt it: an ELF whose section headers claim a 6 GiB symbol
table (a 4 KiB file, and the same file made sparse to 6 GiB), read as the crashed
program's executable.  The report is still made, the refusal is logged, and the process
never grows past 100 MB."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from crash_programs import payload_threads, shared_lab

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="crashprobe unwinds x86-64 cores")
MODULE = "telemetry.probes.crash"
RSS_LIMIT_KB = 100 * 1024
GiB = 1 << 30

# Runs crashprobe in this process and writes its peak RSS (VmHWM: this image's own, not
# what a parent had when it forked) when it exits.
MEASURED = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def peak():
    with open('/proc/self/status') as f:
        hwm = [line for line in f if line.startswith('VmHWM:')][0]
    with open(out, 'w') as f:
        f.write(hwm.split()[1])
atexit.register(peak)
sys.argv[0] = 'crashprobe'
runpy.run_module('telemetry.probes.crash', run_name='__main__')
"""


def crafted_elf(real: Path, out: Path, *, sparse: bool) -> None:
    """The first 4 KiB of `real` (its ELF and program headers and build id, so the core's
    mapping matches it), with new section headers: a .symtab of 6 GiB and a .strtab."""
    page = bytearray(real.read_bytes()[:4096])
    shoff, strtab_at = 0xE00, 0xD00
    names = b"\0.symtab\0.strtab\0"
    page[strtab_at : strtab_at + len(names)] = names
    sections = [
        bytes(64),
        struct.pack("<IIQQQQIIQQ", 1, 2, 0, 0, 0x100, 6 * GiB, 2, 0, 8, 24),  # .symtab -> link 2
        struct.pack("<IIQQQQIIQQ", 9, 3, 0, 0, strtab_at, len(names), 0, 0, 1, 0),  # .strtab
    ]
    table = b"".join(sections)
    page[shoff : shoff + len(table)] = table
    struct.pack_into("<Q", page, 0x28, shoff)  # e_shoff
    struct.pack_into("<HHH", page, 0x3A, 64, 3, 2)  # e_shentsize, e_shnum, e_shstrndx
    out.write_bytes(bytes(page))
    if sparse:
        os.truncate(out, 6 * GiB + 8192)


@pytest.mark.parametrize("sparse", [False, True], ids=["4KiB", "sparse-6GiB"])
def test_crafted_symbol_table_is_refused_within_100_mb(user_install, tmp_path_factory, tmp_path, sparse):
    lab = shared_lab(tmp_path_factory)
    core = lab.core("O0", "segv")
    crafted = tmp_path / "crasher"
    crafted_elf(lab.exe("O0"), crafted, sparse=sparse)
    hwm = tmp_path / "hwm"
    r = subprocess.run([sys.executable, "-c", MEASURED, str(hwm), "--core", str(core), "--exe", str(crafted),
                        "--debug-dir", ""], env=user_install.env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert b"Traceback" not in r.stderr
    assert b"6442450944" in r.stderr  # the refusal names the size it was asked to believe
    frames = payload_threads(r.stdout.decode())[0][1]
    assert len(frames) >= 4  # CFI still walks the stack; only the names are gone
    assert int(hwm.read_text()) < RSS_LIMIT_KB


def test_peak_rss_of_an_ordinary_report(user_install, tmp_path_factory, tmp_path):
    lab = shared_lab(tmp_path_factory)
    hwm = tmp_path / "hwm"
    r = subprocess.run([sys.executable, "-c", MEASURED, str(hwm), "--core", str(lab.core("O0", "many"))],
                       env=user_install.env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert int(hwm.read_text()) < RSS_LIMIT_KB
