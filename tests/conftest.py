"""Shared fixtures: an isolated user-mode installation per test.

Every test that runs programs gets its own XDG tree (config, state, cache, runtime) and
TELEMETRY_MODE=user, so tests never touch the machine's /etc, /var or /run even as root.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from telemetry.paths import Paths


@dataclass
class UserInstall:
    root: Path
    env: dict[str, str]
    paths: Paths

    def write_config(self, text: str) -> Path:
        path = Path(self.paths.config_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not text.lstrip().startswith("["):
            text = "[settings]\n" + text
        path.write_text(text)
        return path

    def opt_in(self) -> None:
        Path(self.paths.opt_in_file).parent.mkdir(parents=True, exist_ok=True)
        Path(self.paths.opt_in_file).touch()

    def opt_out(self) -> None:
        Path(self.paths.opt_in_file).unlink(missing_ok=True)

    def run(self, module: str, *args: str, input: bytes | None = None, timeout: float = 60,
            check: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `python -m module args` the way a user would run the program."""
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            input=input, capture_output=True, timeout=timeout, check=check,
            env={**self.env, **(env or {})},
        )

    def popen(self, module: str, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", module, *args], env=self.env, **kw)


def make_user_install(root: Path) -> UserInstall:
    dirs = {
        "XDG_CONFIG_HOME": root / "config",
        "XDG_STATE_HOME": root / "state",
        "XDG_CACHE_HOME": root / "cache",
        "XDG_DATA_HOME": root / "data",
        "XDG_RUNTIME_DIR": root / "run",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(dirs["XDG_RUNTIME_DIR"], 0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "TELEMETRY_"))}
    env.update({k: str(v) for k, v in dirs.items()})
    env["TELEMETRY_MODE"] = "user"
    env.pop("JOURNAL_STREAM", None)
    env.pop("INVOCATION_ID", None)
    saved = {k: os.environ.get(k) for k in env}
    try:
        os.environ.update(env)
        paths = Paths.user()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return UserInstall(root=root, env=env, paths=paths)


@pytest.fixture
def user_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> UserInstall:
    """An isolated user-mode tree; the test process itself also sees it (os.environ)."""
    # Unix socket paths are limited to 107 bytes: keep the tree short.
    inst = make_user_install(tmp_path)
    for k, v in inst.env.items():
        if k.startswith(("XDG_", "TELEMETRY_")):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    return inst


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
