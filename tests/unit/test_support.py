"""tests/support.py's user-mode installation, which every suite and benchmark builds on."""

from __future__ import annotations

import concurrent.futures
import os
import sys

from support import LOOPBACK, make_user_install

from telemetry.daemons.ctl.supervise import SYSTEMD_ENV


def test_installations_made_from_several_threads_keep_their_own_paths(tmp_path):
    """planted_symlinks makes one per thread; Paths.user() reads the variables of os.environ."""
    before = dict(os.environ)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            installs = list(pool.map(lambda n: make_user_install(tmp_path / f"i{n}"), range(200)))
    finally:
        sys.setswitchinterval(interval)
    for inst in installs:
        for d in (inst.paths.config_dir, inst.paths.state_dir, inst.paths.cache_dir, inst.paths.run_dir):
            assert d.startswith(f"{inst.root}/"), (inst.root, d)
    assert dict(os.environ) == before


def test_an_installation_has_none_of_systemds_variables(tmp_path, monkeypatch):
    """A daemon seeing them would take itself for a unit (idle exit, sd_notify to the outer manager)."""
    for name in SYSTEMD_ENV:
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("XDG_DATA_DIRS", "/usr/share")
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    env = make_user_install(tmp_path).env
    assert not set(SYSTEMD_ENV) & set(env)
    assert {k for k in env if k.startswith("XDG_")} == {
        "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"}
    assert env["TELEMETRY_MODE"] == "user"
    assert env["no_proxy"] == env["NO_PROXY"] == LOOPBACK  # every collector of the tests is on 127.0.0.1


def test_the_test_process_runs_in_the_installation_environment(user_install):
    def own(env):
        return {k: v for k, v in env.items() if k != "PYTEST_CURRENT_TEST"}  # pytest's, set per phase

    assert own(os.environ) == own(user_install.env)
