"""Shared fixtures: an isolated user-mode installation per test (support.py makes it).

Every test that runs programs gets its own XDG tree (config, state, cache, runtime) and
TELEMETRY_MODE=user, so tests never touch the machine's /etc, /var or /run even as root.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from support import UserInstall, make_user_install, short_tempdir

# No per-example deadline: a deadline is a timing assertion, and these machines are shared.
# CI (.ci/run) uses the "ci" profile: the same examples on every run, so a failure there
# is the change's and can be reproduced; elsewhere each run explores new ones.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--systemd", action="store_true",
                     help="run tests/systemd: the Debian packages under systemd in a booted container "
                     "(make test-systemd; needs root)")


@pytest.fixture
def user_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> UserInstall:
    """An isolated user-mode tree; the test process itself runs in its environment too."""
    # Unix socket paths are limited to 107 bytes: keep the tree short.
    inst = make_user_install(tmp_path)
    for k in set(os.environ) - set(inst.env):
        monkeypatch.delenv(k)
    for k, v in inst.env.items():
        monkeypatch.setenv(k, v)
    return inst


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory for Unix sockets (their paths are limited to 107 bytes), removed afterwards."""
    d = short_tempdir()
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _devnull_is_a_device() -> bool:
    try:
        return stat.S_ISCHR(os.stat("/dev/null").st_mode)
    except OSError:
        return False


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    """Tests run as root in CI: none may damage the machine (seen once: /dev/null replaced)."""
    if not _devnull_is_a_device():
        pytest.exit(f"/dev/null is no longer a character device after {item.nodeid}", returncode=3)
