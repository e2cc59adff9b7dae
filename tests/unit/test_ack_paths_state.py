"""The acknowledgement codec, the Paths object, opt-in, machine id and safe file writes."""

from __future__ import annotations

import os
import re
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry import paths as paths_mod
from telemetry.ack import LEGACY_ACCEPT, Ack, AckError, AckStatus, Durability, decode_ack
from telemetry.fsutil import UnsafePathError, atomic_write, clean_temp, ensure_dir, read_small
from telemetry.machineid import ROTATE_AFTER, MachineId, needs_rotation, read_override
from telemetry.optin import OptChange, is_opted_in, opt_in, opt_out
from telemetry.paths import Mode, Paths, PathsError


@pytest.mark.parametrize("status", list(AckStatus))
def test_ack_roundtrip(status):
    ack = Ack(status, "ab" * 16 if status.kept else "detail text 123")
    assert decode_ack(ack.encode()) == ack
    assert ack.kept == (status in (AckStatus.ACCEPTED, AckStatus.DEFERRED))


def line_as_written(ack: Ack) -> bytes:
    """The reply line put together piece by piece: what Ack.encode must write."""
    detail = "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in ack.detail)
    line = b"TM/1 " + ack.status.value.encode()
    if detail:
        line += b" " + detail.encode("ascii")
    if ack.durability is not None and ack.status in (AckStatus.ACCEPTED, AckStatus.DEFERRED):
        line += b" " + ack.durability.value.encode()
    return line[:511] + b"\n"


@given(st.sampled_from(AckStatus), st.one_of(st.text(max_size=40), st.text(min_size=490, max_size=520),
                                              st.sampled_from(["", "ab" * 16, "x" * 497, "x" * 498, "\x85", "\t"])),
       st.one_of(st.none(), st.sampled_from(Durability)))
def test_ack_encodes_its_line(status, detail, durability):
    assert Ack(status, detail, durability=durability).encode() == line_as_written(Ack(status, detail,
                                                                                       durability=durability))


@pytest.mark.parametrize("status", [AckStatus.ACCEPTED, AckStatus.DEFERRED])
@pytest.mark.parametrize("durability", list(Durability))
def test_ack_says_durability_after_the_record_id(status, durability):
    ack = Ack(status, "ab" * 16, durability=durability)
    line = ack.encode()
    assert line == f"TM/1 {status.value} {'ab' * 16} {durability.value}\n".encode()
    assert decode_ack(line) == ack and decode_ack(line).record_id == "ab" * 16
    # What a library that knows only "status, then detail" reads: still kept.
    assert AckStatus(line[5:-1].decode().partition(" ")[0]).kept


def test_ack_without_durability_and_with_unknown_words_is_read():
    assert decode_ack(b"TM/1 accepted " + b"c" * 32 + b"\n") == Ack(AckStatus.ACCEPTED, "c" * 32)
    later = decode_ack(b"TM/1 accepted " + b"c" * 32 + b" some-future-word on-disk\n")
    assert later == Ack(AckStatus.ACCEPTED, "c" * 32, durability=Durability.ON_DISK)
    assert Ack(AckStatus.BUSY, "x", durability=Durability.ON_DISK).encode() == b"TM/1 busy x\n"


def test_ack_bytes_are_specified():
    assert Ack(AckStatus.ACCEPTED, "0" * 32).encode() == b"TM/1 accepted " + b"0" * 32 + b"\n"
    assert Ack(AckStatus.RATE_LIMITED).encode() == b"TM/1 rate-limited\n"
    assert Ack(AckStatus.INVALID, "bad\nline\x00é").encode() == b"TM/1 invalid bad?line??\n"
    assert len(Ack(AckStatus.ERROR, "x" * 5000).encode()) == 512


def test_ack_record_id_and_legacy():
    assert Ack(AckStatus.ACCEPTED, "ab" * 16).record_id == "ab" * 16
    assert Ack(AckStatus.INVALID, "why").record_id is None
    assert decode_ack(b"") is LEGACY_ACCEPT and LEGACY_ACCEPT.kept and LEGACY_ACCEPT.record_id is None


@pytest.mark.parametrize(
    "data", [b"TM/1 accepted", b"HTTP/1.1 200\n", b"TM/1 maybe\n", b"TM/1 \xff\n", b"TM/1 ok" + b"x" * 600 + b"\n"]
)
def test_ack_bad_replies(data):
    with pytest.raises(AckError):
        decode_ack(data)


@given(st.binary(max_size=600))
def test_ack_decoder_only_raises_typed_errors(data):
    try:
        decode_ack(data)
    except AckError:
        pass


def test_system_paths_are_the_originals():
    p = Paths.system()
    assert p.mode is Mode.SYSTEM
    assert (p.config_file, p.opt_in_file, p.socket_path, p.spool_dir, p.machine_id_file) == (
        "/etc/telemetrics/telemetrics.conf",
        "/etc/telemetrics/opt-in",
        "/run/telem-0",
        "/var/spool/telemetry",
        "/var/lib/telemetry/machine_id",
    )
    assert p.static_machine_id_file == "/etc/telemetrics/opt-in-static-machine-id"
    assert p.no_privacy_filters_file == "/etc/telemetrics/opt-in-no-privacy-filters"
    assert p.defaults_file.endswith("/share/defaults/telemetrics/telemetrics.conf")
    assert p.pstore_cache_dir == "/var/cache/telemetry/pstore"


def test_user_paths_follow_xdg(user_install):
    p = user_install.paths
    root = str(user_install.root)
    assert p.mode is Mode.USER
    assert p.config_file == f"{root}/config/telemetrics/telemetrics.conf"
    assert p.socket_path == f"{root}/run/telemetrics/telem-0"
    assert p.spool_dir == f"{root}/state/telemetrics/spool"
    assert all(d.startswith(root) for d in p.user_dirs())


def test_user_paths_without_xdg_variables_are_below_home(monkeypatch, tmp_path):
    """Unset or blank XDG variables fall back to the XDG Base Directory defaults below ~."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", "  ")
    p = Paths.user()
    assert p.config_file == f"{tmp_path}/.config/telemetrics/telemetrics.conf"
    assert p.cache_dir == f"{tmp_path}/.cache/telemetrics"
    assert p.state_dir == f"{tmp_path}/.local/state/telemetrics"
    assert p.socket_path == f"{tmp_path}/.local/state/telemetrics/run/telem-0"


XDG_HOMES = ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")


@pytest.mark.parametrize("value", ["{tmp}/xdg", None, "", "  "])
@pytest.mark.parametrize("home", ["{tmp}/home", "{tmp}/home/"])
def test_user_directories_agree_with_platformdirs(monkeypatch, tmp_path, value, home):
    """The one XDG rule every user-mode program uses (telemetry.paths) gives what
    platformdirs gives for the same environment: absolute variables, unset, blank."""
    platformdirs = pytest.importorskip("platformdirs")
    monkeypatch.setenv("HOME", home.format(tmp=tmp_path))
    for name in XDG_HOMES:
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value.format(tmp=tmp_path) + "/" + name)
    assert paths_mod.user_config_dir() == platformdirs.user_config_dir(paths_mod.APP)
    assert paths_mod.user_state_dir() == platformdirs.user_state_dir(paths_mod.APP)
    assert paths_mod.user_cache_dir() == platformdirs.user_cache_dir(paths_mod.APP)
    p = Paths.user()
    assert (p.config_dir, p.state_dir, p.cache_dir) == (
        platformdirs.user_config_dir(paths_mod.APP), platformdirs.user_state_dir(paths_mod.APP),
        platformdirs.user_cache_dir(paths_mod.APP))


def test_a_relative_xdg_variable_is_ignored(monkeypatch, tmp_path):
    """The XDG Base Directory specification: a relative path in these variables is invalid
    and ignored (platformdirs from 4 on agrees; 2.6 took it as it was)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in XDG_HOMES:
        monkeypatch.setenv(name, "relative/dir")
    assert paths_mod.user_config_dir() == f"{tmp_path}/.config/telemetrics"
    assert paths_mod.user_state_dir() == f"{tmp_path}/.local/state/telemetrics"
    assert paths_mod.user_cache_dir() == f"{tmp_path}/.cache/telemetrics"


def test_mode_selection(monkeypatch):
    monkeypatch.setenv("TELEMETRY_MODE", "user")
    assert Paths.detect().mode is Mode.USER
    assert Paths.detect("system").mode is Mode.SYSTEM
    monkeypatch.setenv("TELEMETRY_MODE", "SYSTEM")
    assert Paths.detect().mode is Mode.SYSTEM
    monkeypatch.setenv("TELEMETRY_MODE", "sideways")
    with pytest.raises(PathsError, match="TELEMETRY_MODE='sideways' is not a mode"):
        Paths.detect()
    monkeypatch.delenv("TELEMETRY_MODE")
    if os.getuid() == 0:
        assert Paths.detect().mode is Mode.SYSTEM


def test_opt_in_and_out_are_idempotent(user_install):
    p = user_install.paths
    assert not is_opted_in(p)
    assert opt_out(p) is OptChange.ALREADY
    assert opt_in(p) is OptChange.CHANGED
    assert is_opted_in(p)
    assert stat.S_IMODE(os.stat(p.opt_in_file).st_mode) == 0o644 & ~_umask()
    assert opt_in(p) is OptChange.ALREADY
    assert opt_out(p) is OptChange.CHANGED
    assert not is_opted_in(p)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_machine_id_generated_kept_and_rotated(user_install):
    p = user_install.paths
    clock = Clock(os.stat(user_install.root).st_mtime + 10)
    mid = MachineId(p, clock)
    first = mid.current()
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert open(p.machine_id_file).read() == first  # no newline
    clock.t += 7200
    assert mid.current() == first
    os.utime(p.machine_id_file, (clock.t - ROTATE_AFTER - 1,) * 2)
    clock.t += 3600
    second = mid.current()
    assert second != first and re.fullmatch(r"[0-9a-f]{32}", second)


def test_machine_id_rotation_rule():
    assert needs_rotation(None, 0)
    assert not needs_rotation(1000, 1000 + ROTATE_AFTER)
    assert needs_rotation(1000, 1001 + ROTATE_AFTER)


def test_static_machine_id_override(user_install):
    p = user_install.paths
    os.makedirs(os.path.dirname(p.static_machine_id_file), exist_ok=True)
    with open(p.static_machine_id_file, "w") as f:
        f.write("static-id-for-this-fleet-0123456789\nsecond line")
    assert MachineId(p).current() == "static-id-for-this-fleet-0123456"
    with open(p.static_machine_id_file, "w") as f:
        f.write("\nonly newline")
    assert read_override(p.static_machine_id_file) is None
    with open(p.static_machine_id_file, "w") as f:
        f.write("has space")
    assert read_override(p.static_machine_id_file) is None
    os.unlink(p.static_machine_id_file)
    os.symlink("/etc/hostname", p.static_machine_id_file)
    assert read_override(p.static_machine_id_file) is None


def test_atomic_write_and_symlink_refusal(tmp_path):
    target = tmp_path / "f"
    atomic_write(str(target), b"one", 0o600)
    atomic_write(str(target), b"two", 0o600)
    assert target.read_bytes() == b"two" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["f"]
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "victim")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        atomic_write(str(link), b"x")
    assert not (tmp_path / "victim").exists()
    with pytest.raises(UnsafePathError, match="symbolic link"):
        read_small(str(link))
    (tmp_path / ".tmp-f.123").write_bytes(b"half")
    assert clean_temp(str(tmp_path)) == 1


def test_atomic_write_replaces_a_dead_writers_temp_file(tmp_path):
    """A kill -9 left .tmp-f.<pid>; a later process with the same pid (after a reboot,
    say) must still be able to write f."""
    target = tmp_path / "f"
    (tmp_path / f".tmp-f.{os.getpid()}").write_bytes(b"half")
    atomic_write(str(target), b"whole", 0o600)
    assert target.read_bytes() == b"whole"
    assert os.listdir(tmp_path) == ["f"]


def test_ensure_dir_refuses_symlink(tmp_path):
    ensure_dir(str(tmp_path / "a/b"))
    (tmp_path / "l").symlink_to(tmp_path / "a")
    with pytest.raises(UnsafePathError):
        ensure_dir(str(tmp_path / "l"))
    (tmp_path / "file").write_text("")
    with pytest.raises(UnsafePathError, match="not a directory"):
        ensure_dir(str(tmp_path / "file"))
