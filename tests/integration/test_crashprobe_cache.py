"""The cache of parsed tables: a second report of the same crash is the same report made
from the cache; an entry someone else could have written, a damaged one, or one made
before a debug file was installed is not used."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from crash_programs import shared_lab

from telemetry.probes.crash.cache import Cache, CacheInvalid, ModuleCache, decode

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="crashprobe unwinds x86-64 cores")
MODULE = "telemetry.probes.crash"


def cache_dir(inst) -> Path:
    return Path(inst.paths.cache_dir, "crashprobe")


def report(inst, core: Path, *args: str) -> str:
    r = inst.run(MODULE, "--core", str(core), *args)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def test_second_report_is_made_from_the_cache(user_install, tmp_path_factory):
    lab = shared_lab(tmp_path_factory)
    core = lab.core("O0", "abort")
    first = report(user_install, core)
    entries = sorted(cache_dir(user_install).iterdir())
    assert entries, "nothing was cached"
    assert all(oct(p.stat().st_mode & 0o777) == "0o644" for p in entries)
    stamps = {p: p.stat().st_mtime_ns for p in entries}
    assert report(user_install, core) == first
    assert {p: p.stat().st_mtime_ns for p in entries} == stamps  # nothing new to add


def test_untrusted_or_damaged_entries_are_not_used(user_install, tmp_path_factory):
    lab = shared_lab(tmp_path_factory)
    core = lab.core("O0", "segv")
    truth = report(user_install, core, "--debug-dir", "")
    entries = sorted(cache_dir(user_install).iterdir())
    exe_entry = next(p for p in entries if p.stat().st_size < 200_000)  # the program's, not libc's
    build_id = bytes.fromhex(exe_entry.name)
    good = exe_entry.read_bytes()
    # A planted entry that names every frame "evil": refused when not ours or writable by others.
    entry = decode(good, build_id)
    entry.frames = {k: ["evil", None, None, []] for k in entry.frames}
    forged = entry.encode()
    exe_entry.write_bytes(forged)
    assert "evil()" in report(user_install, core, "--debug-dir", "")  # ours, as written: used
    exe_entry.chmod(0o666)
    assert report(user_install, core, "--debug-dir", "") == truth  # writable by others: ignored
    exe_entry.chmod(0o644)
    os.chown(exe_entry, 4242, 4242) if os.geteuid() == 0 else None
    if os.geteuid() == 0:
        assert report(user_install, core, "--debug-dir", "") == truth  # owned by someone else
        os.chown(exe_entry, 0, 0)
    damaged = bytearray(forged)
    damaged[len(damaged) // 2] ^= 0xFF
    exe_entry.write_bytes(bytes(damaged))
    assert report(user_install, core, "--debug-dir", "") == truth  # digest mismatch: a miss, rewritten
    assert decode(exe_entry.read_bytes(), build_id).frames  # replaced by a good entry


def test_decode_refuses_what_does_not_add_up(tmp_path):
    entry = ModuleCache(b"\x01\x02", None)
    data = entry.encode()
    assert decode(data, b"\x01\x02").build_id == b"\x01\x02"
    with pytest.raises(CacheInvalid):
        decode(data, b"\x03")  # filed under another build id
    for junk in (b"", data[:-1], b"x" * 100, data[:20] + b"\xff" + data[21:]):
        with pytest.raises(CacheInvalid):
            decode(junk, b"\x01\x02")
    cache = Cache(str(tmp_path / "c"), os.geteuid())
    with pytest.raises(CacheInvalid):
        cache.store(b"not an entry", b"\x01\x02")
    assert cache.load(b"\x01\x02") is None
