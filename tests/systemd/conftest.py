"""The suite under a real systemd: the Debian packages installed in a booted Debian 12
container (machine.py), driven with systemctl and journalctl.

It runs with `make test-systemd` (pytest --systemd); a plain `make test` lists its tests as
skipped.  It is skipped as a whole, with the reason, when the container cannot be made here:
not root, systemd-nspawn or mmdebstrap missing, or no Debian mirror.  The .debs come from
TELEMETRY_TEST_DEBS (a directory, as `make test-systemd` passes the ones `make deb` built)
or are built with `make deb` first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from machine import BASE_PACKAGES, Machine, TreeSpec, Unavailable, booted, cached_tree, check_host
from system import (
    ASSETS,
    CLIENT_PACKAGE,
    COLLECTOR_PACKAGE,
    Figures,
    ensure_installed,
    opted_in_and_started,
    start_collector,
)

SUITE_DIR = Path(__file__).resolve().parent
REPO = SUITE_DIR.parents[1]
_INTEGRATION = str(SUITE_DIR.parent / "integration")
if _INTEGRATION not in sys.path:
    sys.path.insert(0, _INTEGRATION)

FIGURES = Figures()
_STARTED = time.monotonic()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--systemd"):
        return
    skip = pytest.mark.skip(reason="boots a Debian container under systemd: run it with 'make test-systemd'")
    for item in items:
        if SUITE_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not config.getoption("--systemd") or not FIGURES.lines:
        return
    FIGURES.add("suite wall time", f"{time.monotonic() - _STARTED:.1f} s")
    terminalreporter.section("figures under systemd")
    for line in FIGURES.lines:
        terminalreporter.write_line(line)


def _dependencies(deb: Path) -> set[str]:
    """The package names a .deb depends on (the first of each alternative)."""
    field = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True,
                           check=True).stdout
    names = set()
    for clause in field.replace("\n", " ").split(","):
        first = clause.split("|")[0].strip()
        if first:
            names.add(first.split()[0].split(":")[0])
    return names


def _make(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(REPO), "--no-print-directory", *args], capture_output=True,
                          text=True, timeout=timeout)


def _built_debs(out: Path) -> Path:
    """TELEMETRY_TEST_DEBS, else `make deb` into `out`.  Build dependencies that cannot be
    installed are a reason to skip; a build or lintian failure is a failure."""
    given = os.environ.get("TELEMETRY_TEST_DEBS")
    if given:
        return Path(given)
    if shutil.which("dpkg") is None:
        raise Unavailable("not a Debian system: the suite installs the .debs 'make deb' builds")
    deps = _make("deb-deps", timeout=900)
    if deps.returncode != 0:
        tail = " / ".join((deps.stderr or deps.stdout).strip().splitlines()[-2:])
        raise Unavailable(f"the build dependencies of the .debs cannot be installed: {tail}")
    done = _make("deb", f"DEB_DIR={out}")
    if done.returncode != 0:
        tail = (done.stderr + done.stdout).strip().splitlines()[-20:]
        pytest.fail("make deb failed:\n" + "\n".join(tail), pytrace=False)
    return out


@pytest.fixture(scope="session")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    """The booted container with both packages installed (not yet opted in)."""
    core_pattern = Path("/proc/sys/kernel/core_pattern").read_text()
    assets = tmp_path_factory.mktemp("assets")
    assets.chmod(0o755)  # read by unprivileged users in the container (the test program)
    try:
        check_host()
        debs = _built_debs(tmp_path_factory.mktemp("debs"))
        found = {p: sorted(debs.glob(f"{p}_*.deb")) for p in (CLIENT_PACKAGE, COLLECTOR_PACKAGE)}
        missing = [p for p, files in found.items() if len(files) != 1]
        if missing:
            pytest.fail(f"{debs}: expected one .deb of each of {', '.join(missing)}", pytrace=False)
        (assets / "debs").mkdir()
        for files in found.values():
            shutil.copy2(files[0], assets / "debs" / files[0].name)
        needed = set(BASE_PACKAGES)
        for files in found.values():
            needed |= _dependencies(files[0])
        needed -= set(found)
        t0 = time.monotonic()
        tree = cached_tree(TreeSpec(tuple(sorted(needed))))
        FIGURES.add("container tree (mmdebstrap, or the cache)", f"{time.monotonic() - t0:.1f} s")
    except Unavailable as e:
        pytest.skip(str(e))
    name = f"telemtest-{os.getpid()}"
    t0 = time.monotonic()
    try:
        console = tmp_path_factory.mktemp("console") / f"{name}.console"
        with booted(tree, name, binds=[(assets, ASSETS)], log=console) as m:
            FIGURES.add("boot to running", f"{time.monotonic() - t0:.1f} s ({m.boot_state})")
            m.assets = assets
            t0 = time.monotonic()
            ensure_installed(m)
            FIGURES.add("installing both .debs", f"{time.monotonic() - t0:.1f} s")
            yield m
    except Unavailable as e:
        pytest.skip(str(e))
    finally:
        after = Path("/proc/sys/kernel/core_pattern").read_text()
        assert after == core_pattern, f"the host's core_pattern changed: {core_pattern!r} -> {after!r}"


@pytest.fixture(scope="session")
def figures() -> Figures:
    return FIGURES


@pytest.fixture
def ready(machine: Machine) -> Machine:
    """Installed, configured for the collector in the container, opted in, started."""
    opted_in_and_started(machine)
    start_collector(machine)
    return machine
