"""Unit templates and etc/ files: placeholders, what each needs, and the rules every unit keeps."""

from __future__ import annotations

import configparser
import csv
import importlib.util
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry.daemons import MODULES
from telemetry.daemons.store.queue import WAKEUP_FILE, queue_dir
from telemetry.paths import SERVICE_USER
from telemetry_install import artifacts
from telemetry_install.layout import Layout, under
from telemetry_install.package import choose_site_dir
from telemetry_install.templates import TemplateError, fill, placeholders_in, programs_named
from telemetry_install.wheel import (
    PREFIX_MODULE,
    WheelError,
    add_file,
    install_wheel,
    prefix_module,
    record_line,
)

TREE = Path(__file__).resolve().parents[2]
ALL = artifacts.discover(TREE)
UNITS = [a for a in ALL if a.is_unit]
SERVICES = [a for a in UNITS if a.name.endswith(".service")]
DAEMONS = {"telemprobd.service": "telemprobd", "telempostd.service": "telempostd"}

names = st.from_regex(r"[A-Z][A-Z0-9_]{0,12}", fullmatch=True)
plain = st.text(st.characters(blacklist_characters="@"), max_size=40)


def unit(artifact: artifacts.Artifact, layout: Layout | None = None) -> configparser.ConfigParser:
    text = fill(artifact.source.read_text(), (layout or Layout()).placeholders(), artifact.name)
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment]
    parser.read_string(text)
    return parser


# --- templates: the pure core ------------------------------------------------------------

@given(st.dictionaries(names, plain, min_size=1), st.lists(st.tuples(plain, names), max_size=6), plain)
def test_fill_replaces_every_known_placeholder(values, pieces, tail):
    chosen = [(text, name if name in values else next(iter(values))) for text, name in pieces]
    template = "".join(f"{text}@{name}@" for text, name in chosen) + tail
    assert fill(template, values) == "".join(text + values[name] for text, name in chosen) + tail


@given(plain)
def test_text_without_placeholders_is_unchanged(text):
    assert fill(text, {}) == text


@given(names)
def test_an_unknown_placeholder_is_an_error_naming_it(name):
    with pytest.raises(TemplateError, match=f"@{name}@"):
        fill(f"ExecStart=@{name}@/x", {name + "X": "v"})


def test_programs_named_reads_bindir_references(user_install):
    text = "ExecStart=@BINDIR@/hprobe -Hlu\nExecStartPost=@BINDIR@/telem-record-gen\n# /usr/bin/x\n"
    assert programs_named(text) == {"hprobe", "telem-record-gen"}


def test_layout_refuses_a_relative_or_spaced_directory(user_install):
    with pytest.raises(ValueError, match="prefix"):
        Layout(prefix="usr")
    with pytest.raises(ValueError, match="rundir"):
        Layout(rundir="/my run")


def test_layout_derives_every_runtime_path_from_paths(user_install):
    layout = Layout(prefix="/opt/tm", sysconfdir="/opt/etc", localstatedir="/srv/var", rundir="/run2")
    v = layout.placeholders()
    assert v["BINDIR"] == "/opt/tm/bin"
    assert v["OPTIN_FILE"] == "/opt/etc/telemetrics/opt-in"
    assert v["SPOOLDIR"] == "/srv/var/spool/telemetry"
    assert v["WAKEUP_FILE"] == f"/srv/var/spool/telemetry/queue/{WAKEUP_FILE}"
    assert v["QUEUEDIR"] == "/srv/var/spool/telemetry/queue"
    assert v["SOCKET_PATH"] == "/run2/telem-0"
    assert v["TMPFILES_CONF"] == "/opt/tm/lib/tmpfiles.d/telemetrics-dirs.conf"
    assert under("/d", "/usr/bin") == "/d/usr/bin" and under("", "/usr/bin") == "/usr/bin"


# --- the templates of the tree -----------------------------------------------------------

def test_the_tree_has_the_unit_set(user_install):
    assert {a.name for a in UNITS} >= {
        "telemprobd.socket", "telemprobd.service", "telempostd.path", "telempostd.service",
        "hprobe.service", "hprobe.timer", "klogscanner.service", "journal-probe.service",
        "journal-probe-tail.service", "pstore-probe.service", "pstore-clean.service",
    }
    kinds = {a.kind for a in ALL}
    assert {artifacts.Kind.TMPFILES, artifacts.Kind.SYSUSERS, artifacts.Kind.MANAGER_DROPIN} <= kinds


@pytest.mark.parametrize("artifact", ALL, ids=lambda a: a.name)
def test_every_template_uses_known_placeholders_only(artifact, user_install):
    text = artifact.source.read_text()
    filled = fill(text, Layout(prefix="/opt/tm").placeholders(), artifact.name)
    assert not placeholders_in(filled)
    assert "/usr/bin" not in filled, "programs must be named as @BINDIR@/name"


@pytest.mark.parametrize("artifact", UNITS, ids=lambda a: a.name)
def test_every_unit_requires_opt_in(artifact, user_install):
    # spec/defects.md E 26: klogscanner and pstore-clean included.
    u = unit(artifact)
    assert u["Unit"]["ConditionPathExists"] == Layout().paths.opt_in_file
    assert u["Unit"]["Documentation"].startswith("man:")


@pytest.mark.parametrize("artifact", SERVICES, ids=lambda a: a.name)
def test_every_service_is_sandboxed(artifact, user_install):
    s = unit(artifact)["Service"]
    assert s["NoNewPrivileges"] == "yes"
    assert s["ProtectSystem"] == "strict"
    # crashprobe-journal reads the crashed programs' files, which may be in a home folder.
    assert s["ProtectHome"] == ("read-only" if artifact.name == "crashprobe-journal.service" else "yes")
    assert s["PrivateTmp"] == "yes"
    assert s["SystemCallFilter"]
    assert "RestrictAddressFamilies" in s
    if s.get("User") != SERVICE_USER:
        assert s["CapabilityBoundingSet"], "a root service names the capabilities it keeps"


@pytest.mark.parametrize(("name", "families", "writes"), [
    ("telemprobd.service", "AF_UNIX", {"SPOOLDIR", "STATEDIR", "LOGDIR"}),
    ("telempostd.service", "AF_UNIX AF_INET AF_INET6", {"SPOOLDIR", "LOGDIR"}),
])
def test_daemon_hardening(name, families, writes, user_install):
    layout = Layout()
    v = layout.placeholders()
    s = unit(next(a for a in UNITS if a.name == name), layout)["Service"]
    assert s["User"] == s["Group"] == SERVICE_USER
    assert s["RestrictAddressFamilies"] == families
    assert s["CapabilityBoundingSet"] == ""
    assert set(s["ReadWritePaths"].split()) == {v[w] for w in writes}
    assert s["WorkingDirectory"] == v["SPOOLDIR"]
    assert s["ExecStart"] == f"{v['BINDIR']}/{DAEMONS[name]}"


@pytest.mark.parametrize("name", sorted(DAEMONS))
def test_type_and_watchdog_follow_what_the_daemon_sends(name, user_install):
    """Type=notify only for a daemon that sends READY=1 (tested live in
    test_install_activation); WatchdogSec= only for one that pings WATCHDOG=1."""
    s = unit(next(a for a in UNITS if a.name == name))["Service"]
    sources = "".join(p.read_text() for p in (TREE / "daemons").rglob("*.py"))
    assert s["Type"] == "notify"
    if "WatchdogSec" in s:
        assert "WATCHDOG=1" in sources
        # A hung daemon the watchdog aborts is killed soon after, not TimeoutStopSec later.
        assert 0 < int(s["TimeoutAbortSec"]) <= 30
    assert "SIGHUP" in Path(importlib.util.find_spec(MODULES[DAEMONS[name]]).origin).read_text()
    assert s["ExecReload"] == "/bin/sh -c 'kill -HUP \"$$MAINPID\"'"


def test_socket_and_path_units_follow_the_configured_locations(user_install):
    layout = Layout(localstatedir="/srv/var", rundir="/run2")
    sock = unit(next(a for a in UNITS if a.name == "telemprobd.socket"), layout)
    path = unit(next(a for a in UNITS if a.name == "telempostd.path"), layout)
    assert sock["Socket"]["ListenStream"] == "/run2/telem-0"
    assert path["Path"]["PathModified"] == f"/srv/var/spool/telemetry/queue/{WAKEUP_FILE}"
    assert path["Path"]["Unit"] == "telempostd.service"


def test_tmpfiles_lists_every_work_directory_owned_by_the_service_user(user_install):
    layout = Layout(localstatedir="/srv/var")
    tmp = next(a for a in ALL if a.kind is artifacts.Kind.TMPFILES)
    assert tmp.destination(layout) == layout.paths.tmpfiles_conf
    lines = [line.split() for line in fill(tmp.source.read_text(), layout.placeholders()).splitlines()
             if line and not line.startswith("#")]
    p = layout.paths
    assert {line[1] for line in lines} == {p.state_dir, p.spool_dir, queue_dir(p.spool_dir), p.journal_dir,
                                           p.cache_dir, p.pstore_cache_dir}
    for kind, _path, mode, user, group, age in lines:
        assert (kind, user, group, age) == ("d", SERVICE_USER, SERVICE_USER, "-")
        assert int(mode, 8) & 0o007 == 0


def test_sysusers_creates_the_service_user(user_install):
    sysusers = next(a for a in ALL if a.kind is artifacts.Kind.SYSUSERS)
    line = fill(sysusers.source.read_text(), Layout().placeholders()).splitlines()[-1].split()
    assert line[:3] == ["u", SERVICE_USER, "-"]


# --- which files are installed -----------------------------------------------------------

def test_activating_units_need_their_service_program(user_install):
    chosen, skipped = artifacts.select(UNITS, {"telemprobd"})
    assert {a.name for a in chosen} == {"telemprobd.socket", "telemprobd.service"}
    missing = {a.name: m for a, m in skipped}
    assert missing["telempostd.path"] == {"telempostd"}
    assert missing["hprobe.timer"] == {"hprobe"}


def test_a_probe_unit_needs_telemprobd_whose_socket_it_requires(user_install):
    chosen, skipped = artifacts.select(UNITS, {"hprobe"})
    assert chosen == []
    assert {a.name: m for a, m in skipped}["hprobe.timer"] == {"telemprobd"}
    chosen, _ = artifacts.select(UNITS, {"hprobe", "telemprobd"})
    assert {"hprobe.service", "hprobe.timer"} <= {a.name for a in chosen}


def test_required_programs_follow_requires_without_looping(user_install):
    texts = {"a.service": "Requires=b.service\nExecStart=@BINDIR@/a\n",
             "b.service": "BindsTo=a.service c.socket\nExecStart=@BINDIR@/b\n",
             "c.socket": "ListenStream=/x\n", "c.service": "ExecStart=@BINDIR@/c\n"}
    assert artifacts.required_programs("a.service", texts["a.service"], texts) == {"a", "b", "c"}
    assert artifacts.required_programs("c.socket", texts["c.socket"], texts) == {"c"}
    assert artifacts.required_programs("x.conf", "@BINDIR@/z", texts) == {"z"}


def test_the_core_limit_drop_in_comes_with_crashprobe_only(user_install):
    dropins = [a for a in ALL if a.kind is artifacts.Kind.MANAGER_DROPIN]
    assert dropins
    assert artifacts.select(dropins, set())[0] == []
    assert artifacts.select(dropins, {"crashprobe"})[0] == dropins
    text = fill(dropins[0].source.read_text(), Layout().placeholders())
    assert "DefaultLimitCORE=infinity" in text


def test_sysctl_makes_crashprobe_the_core_handler_with_its_own_arguments(user_install):
    args = pytest.importorskip("telemetry.probes.crash.args", reason="crashprobe does not exist yet")
    sysctl = [a for a in ALL if a.kind is artifacts.Kind.SYSCTL]
    assert [a.name for a in sysctl] == ["40-crash-probe.conf"]
    assert artifacts.select(sysctl, set())[0] == []
    layout = Layout(prefix="/opt/tm")
    settings = [line.partition("=") for line in fill(sysctl[0].source.read_text(), layout.placeholders()).splitlines()
                if line.strip() and not line.startswith(("#", ";"))]
    assert [(k.strip(), v.strip()) for k, _, v in settings] == [
        ("kernel.core_pattern", args.core_pattern("/opt/tm/bin"))]
    assert settings[0][2].strip().startswith("|/opt/tm/bin/crashprobe ")


def test_discover_maps_folders_to_destinations(tmp_path, user_install):
    (tmp_path / "systemd" / "tmpfiles.d").mkdir(parents=True)
    (tmp_path / "etc" / "sysctl.d").mkdir(parents=True)
    (tmp_path / "systemd" / "a.service.in").write_text("[Service]\nExecStart=@BINDIR@/a\n")
    (tmp_path / "systemd" / "a.socket.in").write_text("[Socket]\nListenStream=/x\n")
    (tmp_path / "systemd" / "b.timer").write_text("[Timer]\nUnit=a.service\n")
    (tmp_path / "systemd" / "notes.txt").write_text("not a unit")
    (tmp_path / "systemd" / "tmpfiles.d" / "x.conf.in").write_text("d /x 0750 a a -\n")
    (tmp_path / "etc" / "sysctl.d" / "50-x.conf.in").write_text("kernel.x = |@BINDIR@/b\n")
    found = {a.name: a for a in artifacts.discover(tmp_path)}
    assert set(found) == {"a.service", "a.socket", "b.timer", "x.conf", "50-x.conf"}
    layout = Layout(prefix="/opt/p")
    assert found["a.socket"].destination(layout) == "/opt/p/lib/systemd/system/a.socket"
    assert found["x.conf"].destination(layout) == "/opt/p/lib/tmpfiles.d/x.conf"
    assert found["50-x.conf"].destination(layout) == "/opt/p/lib/sysctl.d/50-x.conf"
    chosen, skipped = artifacts.select(found.values(), {"a"})
    assert {a.name for a in chosen} == {"a.service", "a.socket", "b.timer", "x.conf"}
    assert [(a.name, m) for a, m in skipped] == [("50-x.conf", {"b"})]


# --- packaging helpers -------------------------------------------------------------------

@pytest.mark.parametrize(("prefix", "search", "expected"), [
    # Debian: pip's scheme is not searched; the distribution's folder is.
    ("/usr", ["/usr/lib/python311.zip", "/usr/lib/python3.11", "/usr/local/lib/python3.11/dist-packages",
              "/usr/lib/python3/dist-packages"], "/usr/lib/python3/dist-packages"),
    ("/usr/local", ["/usr/lib/python3.11", "/usr/local/lib/python3.11/dist-packages",
                    "/usr/lib/python3/dist-packages"], "/usr/local/lib/python3.11/dist-packages"),
    # Fedora-like: pip's own folder.
    ("/usr", ["/usr/lib64/python3.12", "/usr/lib/python3.12/site-packages"], "/usr/lib/python3.12/site-packages"),
    # A prefix the interpreter does not search: where pip put it.
    ("/opt/tm", ["/usr/lib/python3/dist-packages"], "PIP"),
])
def test_choose_site_dir(prefix, search, expected, user_install):
    assert choose_site_dir(prefix, "PIP", search) == expected


def test_add_file_to_a_wheel_records_it(tmp_path, user_install):
    src = tmp_path / "p-1.0-py3-none-any.whl"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("telemetry/__init__.py", b"")
        z.writestr("p-1.0.dist-info/METADATA", b"Name: p\n")
        z.writestr("p-1.0.dist-info/RECORD", "telemetry/__init__.py,,\np-1.0.dist-info/RECORD,,\n")
    data = prefix_module(Layout(prefix="/opt/tm", localstatedir="/srv"))
    dst = tmp_path / "out.whl"
    add_file(src, dst, PREFIX_MODULE, data)
    with zipfile.ZipFile(dst) as z:
        assert z.read(PREFIX_MODULE) == data
        record = z.read("p-1.0.dist-info/RECORD").decode().splitlines()
        assert record_line(PREFIX_MODULE, data) in record
        assert record[-1] == "p-1.0.dist-info/RECORD,,"
        assert z.read("p-1.0.dist-info/METADATA") == b"Name: p\n"
    namespace: dict = {}
    exec(data.decode(), namespace)
    assert (namespace["PREFIX"], namespace["LOCALSTATEDIR"], namespace["SYSCONFDIR"]) == ("/opt/tm", "/srv", "/etc")


def test_add_file_refuses_something_that_is_not_a_wheel(tmp_path, user_install):
    src = tmp_path / "x.whl"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("a.txt", b"")
    with pytest.raises(WheelError, match="not a wheel"):
        add_file(src, tmp_path / "y.whl", PREFIX_MODULE, b"")


# --- installing a wheel without pip ------------------------------------------------------

def tiny_wheel(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    files = {
        "pkg/__init__.py": b"def main():\n    return 0\n",
        "pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n",
        "pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "pkg-1.0.dist-info/entry_points.txt": b"[console_scripts]\nmy-tool = pkg:main\n",
        **(extra or {}),
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("pkg-1.0.dist-info/RECORD", "".join(f"{record_line(n, d)}\n" for n, d in files.items()))
    return path


def test_install_wheel_writes_the_files_scripts_and_record(tmp_path, user_install):
    wheel = tiny_wheel(tmp_path / "pkg-1.0-py3-none-any.whl")
    done = install_wheel(wheel, destdir=str(tmp_path / "d"), site_dir="/usr/lib/python3/dist-packages",
                         bindir="/usr/bin", python="/usr/bin/python3")
    site = tmp_path / "d/usr/lib/python3/dist-packages"
    script = tmp_path / "d/usr/bin/my-tool"
    assert script.read_text().splitlines()[:3] == ["#!/usr/bin/python3", "import sys", "from pkg import main"]
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert (site / "pkg-1.0.dist-info/INSTALLER").read_text() == "telemetry_install\n"
    record = {row[0]: row[1:] for row in csv.reader((site / "pkg-1.0.dist-info/RECORD").read_text().splitlines())}
    assert record["../../../bin/my-tool"][0].startswith("sha256=")
    assert record["pkg/__init__.py"][1] == str(len(b"def main():\n    return 0\n"))
    assert record["pkg-1.0.dist-info/RECORD"] == ["", ""]
    assert done.top_level == ("pkg", "pkg-1.0.dist-info")
    assert "/usr/bin/my-tool" in done.files
    ran = subprocess.run([sys.executable, str(script)], env={**user_install.env, "PYTHONPATH": str(site)})
    assert ran.returncode == 0


@pytest.mark.parametrize("name", ["../evil.py", "/etc/evil", "pkg-1.0.data/scripts/x"])
def test_install_wheel_refuses_files_outside_its_tree(tmp_path, name, user_install):
    wheel = tiny_wheel(tmp_path / "w.whl", {name: b"x"})
    with pytest.raises(WheelError):
        install_wheel(wheel, destdir=str(tmp_path / "d"), site_dir="/site", bindir="/bin", python="/p")
    assert not (tmp_path / "etc").exists() and not (tmp_path / "evil.py").exists()


@pytest.mark.parametrize("subdir", ["", "collector"])
def test_every_package_folder_is_in_its_distribution(subdir, user_install):
    """A sub-package missing from [tool.setuptools] packages is missing from the wheel and
    the .deb, though an editable install still finds it."""
    root = Path(__file__).resolve().parents[2] / subdir
    table = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(table["packages"])
    dirs = table.get("package-dir") or {name.split(".")[0]: name.split(".")[0] for name in listed}
    found = set()
    for name, folder in dirs.items():
        for init in (root / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(root / folder)
            found.add(".".join((name, *rel.parts)))
    assert found - listed == set(), "listed in no distribution"


def test_the_debian_version_is_the_programs_version(user_install):
    from telemetry.version import __version__
    from telemetry_collector.version import __version__ as collector_version

    first = (Path(__file__).resolve().parents[2] / "debian" / "changelog").read_text().splitlines()[0]
    debian = first.split("(", 1)[1].split(")", 1)[0]
    assert debian == __version__ == collector_version, "bump debian/changelog with the version"
