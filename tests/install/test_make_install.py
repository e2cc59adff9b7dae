"""`make install DESTDIR=… PREFIX=…` builds the tree a distribution package would ship.

One installation per module (building the wheel takes a few seconds); each test then
checks one aspect: the tree, the installed programs, `systemd-analyze verify` on every
unit, `systemd-analyze security --offline=true` on the daemons, and `man -l` on the pages.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from telemetry.version import __version__
from telemetry_install import artifacts, completion, manpages
from telemetry_install.layout import Layout
from telemetry_install.programs import read_programs, resolve
from telemetry_install.templates import placeholders_in

TREE = Path(__file__).resolve().parents[2]
PREFIX = "/usr"
MAX_EXPOSURE = 2.0
DAEMON_UNITS = ("telemprobd.service", "telempostd.service")


def install_python() -> str:
    """The Makefile's default (/usr/bin/python3) when it can run the package, else ours."""
    candidate = "/usr/bin/python3"
    if os.access(candidate, os.X_OK):
        done = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                              capture_output=True, text=True)
        if done.stdout.strip() == "True":
            return candidate
    return sys.executable


@dataclass(frozen=True)
class Installed:
    destdir: Path
    python: str
    output: str

    @property
    def root(self) -> Path:
        return self.destdir / PREFIX.lstrip("/")

    def site_dir(self) -> Path:
        found = sorted(self.root.glob("lib*/python3*/*-packages/telemetry/_prefix.py"))
        assert len(found) == 1, found
        return found[0].parent.parent

    def units(self) -> list[Path]:
        return sorted(p for p in (self.root / "lib/systemd/system").iterdir() if p.suffix in
                      (".service", ".socket", ".path", ".timer"))


def offline() -> list[str]:
    """A prefix that runs a command without any network (a new network namespace with only a
    loopback that is down), when this user may make one; else nothing."""
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    return ["unshare", "--net"] if probe.returncode == 0 else []


def make(target: str, destdir: Path, *extra: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    python = install_python()
    venv = Path(sys.executable).parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "TELEMETRY_"))}
    env["TELEMETRY_MODE"] = "user"
    return subprocess.run(
        [*(prefix or []), "make", "-C", str(TREE), "--no-print-directory", target, f"VENV={venv}",
         f"PY={sys.executable}", f"DESTDIR={destdir}", f"PREFIX={PREFIX}", f"INSTALL_PYTHON={python}", *extra],
        capture_output=True, text=True, env=env, timeout=600,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    destdir = tmp_path_factory.mktemp("destdir")
    done = make("install", destdir, prefix=offline())
    assert done.returncode == 0, done.stdout + done.stderr
    return Installed(destdir, install_python(), done.stdout + done.stderr)


def existing_programs() -> list[str]:
    return sorted(p.name for p, _ in resolve(read_programs(TREE / "pyproject.toml"))[0])


# --- the tree ----------------------------------------------------------------------------

def test_nothing_is_written_outside_destdir_or_into_the_sources(installed, user_install):
    assert set(os.listdir(installed.destdir)) == {PREFIX.strip("/").split("/")[0]}
    assert not (TREE / "telemetry" / "_prefix.py").exists()


def test_the_package_knows_its_prefix(installed, user_install):
    site = installed.site_dir()
    namespace: dict = {}
    exec((site / "telemetry" / "_prefix.py").read_text(), namespace)
    assert (namespace["PREFIX"], namespace["SYSCONFDIR"], namespace["LOCALSTATEDIR"], namespace["RUNDIR"]) == (
        PREFIX, "/etc", "/var", "/run")
    for sub in ("daemons", "probes", "daemons/probd", "daemons/postd", "daemons/ctl", "daemons/store",
                "daemons/runtime"):
        assert (site / "telemetry" / sub / "__init__.py").exists()
    done = subprocess.run(
        [sys.executable, "-c", "import telemetry.paths as p; print(p.__file__); print(p.Paths.system().defaults_file)"],
        capture_output=True, text=True, env={**user_install.env, "PYTHONPATH": str(site)},
        cwd=user_install.root,
    )
    where, defaults = done.stdout.split()
    assert where.startswith(str(site)), "the installed copy is the one imported"
    assert defaults == f"{PREFIX}/share/defaults/telemetrics/telemetrics.conf"
    if installed.python == "/usr/bin/python3":
        searched = subprocess.run([installed.python, "-c", "import sys; print('\\n'.join(sys.path))"],
                                  capture_output=True, text=True).stdout.split("\n")
        assert "/" + str(site.relative_to(installed.destdir)) in searched, "the interpreter finds the package"


def test_every_program_is_installed_and_runs(installed, user_install):
    programs = existing_programs()
    if not programs:
        pytest.skip("no program of [project.scripts] exists yet")
    for name in programs:
        script = installed.root / "bin" / name
        assert script.stat().st_mode & 0o755 == 0o755, name
        assert script.read_text().splitlines()[0] == f"#!{installed.python}"
        # The dependencies live in our virtualenv, so run the installed script with it.
        done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                              env={**user_install.env, "PYTHONPATH": str(installed.site_dir())},
                              cwd=user_install.root, timeout=60)
        assert done.returncode == 0, (name, done.stderr)


def test_units_and_data_files_are_installed_for_the_programs_there(installed, user_install):
    programs = set(existing_programs())
    chosen, skipped = artifacts.select(artifacts.discover(TREE), programs)
    layout = Layout(prefix=PREFIX)
    for artifact in chosen:
        path = installed.destdir / artifact.destination(layout).lstrip("/")
        assert path.exists(), artifact.name
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert not placeholders_in(path.read_text()), f"unfilled placeholder in {path}"
    for artifact, _missing in skipped:
        assert not (installed.destdir / artifact.destination(layout).lstrip("/")).exists()
        assert f"skipping {artifact.name}" in installed.output
    tmpfiles = installed.root / "lib/tmpfiles.d/telemetrics-dirs.conf"
    assert "d /var/spool/telemetry 0750 telemetry telemetry -" in tmpfiles.read_text()
    assert (installed.root / "lib/sysusers.d/telemetrics.conf").read_text().splitlines()[-1].startswith("u telemetry ")
    conf = (installed.root / "share/defaults/telemetrics/telemetrics.conf").read_text()
    assert "\n[settings]\n" in conf and "\n#server=" in conf


def test_man_pages_for_every_program_and_the_config(installed, user_install):
    man = installed.root / "share/man"
    expected = {f"man1/{p}.1" for p in existing_programs()} | {"man5/telemetrics.conf.5"}
    assert {str(p.relative_to(man)) for p in man.rglob("*.[15]")} == expected
    for name in existing_programs():
        page = manpages.Page(name, 1, (man / f"man1/{name}.1").read_text())
        titles = manpages.section_titles(page)
        assert [t for t in manpages.REQUIRED_SECTIONS if t not in titles] == [], name


def test_install_needs_no_network_apt_or_pip(installed, user_install):
    """The module's installation ran without a network when this user can take it away;
    either way make install asks neither apt nor pip for anything."""
    if not offline():
        pytest.skip("cannot run make install without a network here (unshare --net needs root)")
    dry = subprocess.run(["make", "-C", str(TREE), "--no-print-directory", "-n", "install"], capture_output=True,
                         text=True, timeout=60).stdout
    assert "apt-get" not in dry and " pip " not in dry and "-m pip" not in dry, dry


@pytest.mark.parametrize("shell", completion.SHELLS)
def test_completion_for_every_program(installed, user_install, shell):
    layout = Layout(prefix=PREFIX)
    for name in existing_programs():
        f = completion.CompletionFile(name, shell, "")
        path = installed.destdir / f.destination(layout).lstrip("/")
        assert completion.complete_var(name) in path.read_text(), path
        if shell == "bash":
            done = subprocess.run(["bash", "-c", f'source "{path}" && complete -p {name}'], capture_output=True,
                                  text=True, timeout=30)
            assert done.returncode == 0 and name in done.stdout, (name, done.stderr)


def test_completion_answers_from_the_installed_program(installed, user_install):
    """What bash asks telemctl when the user types `telemctl op<TAB>`."""
    script = installed.root / "bin" / "telemctl"
    env = {**user_install.env, "PYTHONPATH": str(installed.site_dir()), "COMP_WORDS": "telemctl op", "COMP_CWORD": "1",
           completion.complete_var("telemctl"): "bash_complete"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert {"plain,opt-in", "plain,opt-out"} <= set(done.stdout.split()), done.stdout


def test_uninstall_removes_what_install_wrote(tmp_path, user_install):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    destdir = tmp_path / "stage"
    done = make("install", destdir)
    assert done.returncode == 0, done.stderr
    manifest = destdir / f"{PREFIX.lstrip('/')}/share/telemetrics-client/installed-files"
    listed = manifest.read_text().splitlines()
    assert f"{PREFIX}/bin/telemctl" in listed and f"{PREFIX}/share/man/man1/telemctl.1" in listed
    # What the programs may leave: compiled modules written on first use.
    site = next(destdir.rglob("telemetry/__init__.py")).parent
    (site / "__pycache__" / "extra.cpython-311.pyc").write_bytes(b"")
    done = make("uninstall", destdir)
    assert done.returncode == 0, done.stderr
    left = sorted(str(p.relative_to(destdir)) for p in destdir.rglob("*") if not p.is_dir())
    assert left == [], left
    assert not list(destdir.rglob("*telemetr*")), "an empty folder of ours is left"
    again = make("uninstall", destdir)
    assert again.returncode == 2 and "nothing to uninstall" in again.stderr


# --- systemd -----------------------------------------------------------------------------

def verify_root(installed: Installed, tmp: Path) -> Path:
    """The installed tree, plus what a real system has: its targets and the programs the
    units call outside the package (/bin/sh)."""
    host_units = Path("/usr/lib/systemd/system")
    if not (host_units / "sysinit.target").exists():
        pytest.skip("this machine has no systemd unit directory to verify against")
    root = tmp / "root"
    shutil.copytree(installed.destdir, root, symlinks=True)
    etc_units = root / "etc/systemd/system"
    etc_units.mkdir(parents=True)
    for target in host_units.glob("*.target"):
        shutil.copy(target, etc_units / target.name)
    for unit in installed.units():
        for m in re.finditer(r"^Exec\w*=[-@:+!]*(/\S+)", unit.read_text(), re.MULTILINE):
            inside = root / m.group(1).lstrip("/")
            if not inside.exists() and os.path.exists(m.group(1)):
                inside.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(m.group(1), inside)
    return root


def test_systemd_analyze_verify_every_unit(installed, tmp_path, user_install):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    units = installed.units()
    if not units:
        pytest.skip("no unit is installed yet: none of their programs exists")
    root = verify_root(installed, tmp_path)
    man_args = [] if shutil.which("man") else ["--man=no"]
    env = {**user_install.env, "MANPATH": str(installed.root / "share/man"), "SYSTEMD_LOG_LEVEL": "notice"}
    done = subprocess.run([analyze, "verify", f"--root={root}", *man_args, *(u.name for u in units)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=root)
    print(done.stdout, done.stderr)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


def offline_security_supported(analyze: str) -> bool:
    helptext = subprocess.run([analyze, "security", "--help"], capture_output=True, text=True).stdout
    return "--offline" in helptext


@pytest.mark.parametrize("unit", DAEMON_UNITS)
def test_daemon_exposure_is_at_most_2(unit, installed, tmp_path, user_install):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    if not offline_security_supported(analyze):
        pytest.skip("this systemd-analyze has no 'security --offline' (systemd 250 or later)")
    if not (installed.root / "lib/systemd/system" / unit).exists():
        pytest.skip(f"{unit} is not installed: its program does not exist yet")
    root = verify_root(installed, tmp_path)
    done = subprocess.run([analyze, "security", "--offline=true", f"--root={root}", "--no-pager", unit],
                          capture_output=True, text=True, env=user_install.env, timeout=120)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert m, done.stdout + done.stderr
    exposure = float(m.group(1))
    print(f"{unit}: overall exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, done.stdout


def test_installed_man_pages_render(installed, user_install):
    if not (shutil.which("man") and shutil.which("groff")):
        pytest.skip("man and groff are not installed (Debian packages man-db, groff-base)")
    env = {**user_install.env, "MANWIDTH": "100", "LC_ALL": "C.UTF-8", "MANPAGER": "cat"}
    for page in sorted((installed.root / "share/man").rglob("*.[15]")):
        done = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0 and done.stderr == "", (page, done.stderr)
        assert "NAME" in done.stdout and __version__ in done.stdout, page


def test_install_with_the_system_python_and_no_virtualenv(tmp_path, user_install):
    """A packager's build: no .venv, the system's python3 runs the tooling with its own
    setuptools, wheel and the programs' dependencies (Debian's packages), offline."""
    system = "/usr/bin/python3"
    needed = ("setuptools", "wheel", "click", "psutil", "pycurl", "elftools", "systemd")
    if not os.access(system, os.X_OK) or subprocess.run(
            [system, "-c", f"import {', '.join(needed)}"], capture_output=True).returncode != 0:
        pytest.skip(f"{system} lacks one of {', '.join(needed)} (Debian: python3-setuptools python3-wheel "
                    "python3-click python3-psutil python3-pycurl python3-pyelftools python3-systemd)")
    destdir = tmp_path / "stage"
    done = make("install", destdir, "INSTALL_TOOL_PYTHON=" + system, prefix=offline())
    assert done.returncode == 0, done.stderr
    script = destdir / PREFIX.lstrip("/") / "bin" / "hprobe"
    site = next(destdir.rglob("telemetry/__init__.py")).parent.parent
    ran = subprocess.run([system, str(script), "--version"], capture_output=True, text=True,
                         env={**user_install.env, "PYTHONPATH": str(site)}, timeout=60)
    assert (ran.returncode, ran.stdout.strip()) == (0, __version__), ran.stderr
