"""Header value sources, against fake /sys, /proc and /etc trees and against this machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from telemetry.metadata import (
    MetadataError,
    read_cpu_model,
    read_dmi,
    read_metadata,
    read_os_release,
)

UNAME = os.uname_result(("Linux", "host", "6.6.1-1.native", "#1", "x86_64"))


def tree(root: Path, files: dict[str, bytes | str]) -> Path:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz\n"


def test_full_tree(tmp_path):
    root = tree(
        tmp_path,
        {
            "sys/class/dmi/id/sys_vendor": "LENOVO\n",
            "sys/class/dmi/id/product_name": "20L8S2N800\n",
            "sys/class/dmi/id/product_version": "ThinkPad T480s\n",
            "sys/class/dmi/id/board_name": "20L8S2N800\n",
            "sys/class/dmi/id/board_vendor": "LENOVO\n",
            "sys/class/dmi/id/bios_version": "N22ET37W (1.14 )\n",
            "proc/cpuinfo": CPUINFO,
            "etc/os-release": 'NAME="Clear Linux OS"\nID=clear-linux-os\nVERSION_ID=41000\n',
        },
    )
    md = read_metadata(str(root), UNAME)
    assert md.host_type == "LENOVO|20L8S2N800|ThinkPad T480s"
    assert md.board_name == "20L8S2N800|LENOVO"
    assert md.bios_version == "N22ET37W (1.14 )"
    assert md.cpu_model == "Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz"
    assert md.build == "41000"
    assert md.system_name == "clear-linux-os"
    assert md.arch == "x86_64"
    assert md.kernel_version == "6.6.1-1.native"


def test_missing_everything_gives_the_originals_substitutes(tmp_path):
    tree(tmp_path, {"proc/cpuinfo": "processor\t: 0\n"})
    md = read_metadata(str(tmp_path), UNAME)
    assert md.host_type == "no_sv_file|no_pn_file|no_pvr_file"
    assert md.board_name == "no_bn_file|no_bv_file"
    assert md.bios_version == "no_bv_file"
    assert md.cpu_model == "blank"
    assert md.build == "0"
    assert md.system_name == ""


def test_no_cpuinfo_is_an_error(tmp_path):
    with pytest.raises(MetadataError, match="cpuinfo"):
        read_metadata(str(tmp_path), UNAME)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"Dell Inc.\n", "Dell Inc."),
        (b"   \n", "blank"),
        (b"\n", "blank"),
        (b"", "blank"),
        (b"abc", "ab"),  # the last byte always goes, newline or not
        (b"x" * 100 + b"\n", "x" * 77),
        (b"two\nlines\n", "two"),
        (b" padded \n", " padded "),
        (b"bad\xffbyte\n", "bad\ufffdbyte"),
        (b"ctl\x01char\n", "ctl?char"),
    ],
)
def test_dmi_value_rules(tmp_path, content, expected):
    tree(tmp_path, {"sys/class/dmi/id/sys_vendor": content})
    assert read_dmi(str(tmp_path), "sys_vendor", "sv") == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("model name\t: AMD EPYC\n", "AMD EPYC"),
        ("model name\t:\n", "blank"),
        ("model name\t: \n", "blank"),
        ("model name\t: " + "y" * 100 + "\n", "y" * 65),
        ("model name:X\n", "blank"),
    ],
)
def test_cpu_model_rules(tmp_path, line, expected):
    tree(tmp_path, {"proc/cpuinfo": "processor\t: 0\n" + line})
    assert read_cpu_model(str(tmp_path)) == expected


def test_cpu_model_missing_line_logs_notice(tmp_path, caplog):
    tree(tmp_path, {"proc/cpuinfo": "processor\t: 0\n"})
    with caplog.at_level("INFO"):
        assert read_cpu_model(str(tmp_path)) == "blank"
    assert "Unable to find attribute:model name" in caplog.text


@pytest.mark.parametrize(
    ("content", "build", "system_name"),
    [
        ('ID=debian\nVERSION_ID="12"\n', '"12"', "debian"),
        ("ID=fedora\nVARIANT_ID=workstation\nVERSION_ID=40\n", "40", "fedora_workstation"),
        ("NAME=x\n", "0", "unknown"),
        ("ID=\nID=second\n", "0", "second"),
        (" ID=indented\n", "0", "unknown"),
        ("ID=a b c\nVERSION_ID=1.2 extra\n", "1.2", "a"),
        ("ID=" + "z" * 60 + "\nVARIANT_ID=" + "v" * 60 + "\n", "0", ("z" * 60 + "_" + "v" * 60)[:79]),
    ],
)
def test_os_release_rules(tmp_path, content, build, system_name):
    tree(tmp_path, {"etc/os-release": content, "proc/cpuinfo": CPUINFO})
    md = read_metadata(str(tmp_path), UNAME)
    assert (md.build, md.system_name) == (build, system_name)


def test_os_release_symlink_falls_back_to_usr_lib(tmp_path):
    tree(tmp_path, {"usr/lib/os-release": "ID=fallback\nVERSION_ID=7\n", "elsewhere": "ID=linked\n"})
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").symlink_to(tmp_path / "elsewhere")
    assert read_os_release(str(tmp_path)) == {"ID": "fallback", "VERSION_ID": "7"}


def _first_line(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.readline(78)[:-1].decode()
    except OSError:
        return None


def test_this_machine_matches_its_files():
    md = read_metadata()
    u = os.uname()
    assert md.arch == u.machine and md.kernel_version == u.release
    for name, key, got in (
        ("sys_vendor", "sv", md.host_type.split("|")[0]),
        ("board_name", "bn", md.board_name.split("|")[0]),
        ("bios_version", "bv", md.bios_version),
    ):
        value = _first_line(f"/sys/class/dmi/id/{name}")
        if value is None:
            assert got == f"no_{key}_file"
        elif value.strip(" ") == "":
            assert got == "blank"
        else:
            assert got == value
    with open("/proc/cpuinfo") as f:
        models = [line for line in f if line.startswith("model name")]
    if models:
        assert models[0].split(":", 1)[1].strip().startswith(md.cpu_model.strip()) or md.cpu_model == "blank"
    for candidate in ("/etc/os-release", "/usr/lib/os-release"):
        if os.path.isfile(candidate) and not os.path.islink(candidate):
            with open(candidate) as f:
                ids = [ln.split("=", 1)[1].split()[0] for ln in f if ln.startswith("ID=") and ln[3:].strip()]
            if ids:
                assert md.system_name.split("_")[0] == ids[0]
            break
