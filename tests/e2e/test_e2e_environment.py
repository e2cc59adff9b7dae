"""The environment is input too: what systemd would set, set wrongly, gives one line and
a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULE = "telemetry.daemons.probd.main"


@pytest.mark.parametrize("listen_fds", ["1", "abc", "-3"])
def test_bad_socket_activation_environment_is_one_line(user_install, listen_fds):
    """LISTEN_FDS naming descriptors that are not there (fd 3 closed) or not a number."""
    user_install.opt_in()
    script = f'LISTEN_PID=$$ LISTEN_FDS={listen_fds} exec "{sys.executable}" -m {MODULE} 3<&-'
    r = subprocess.run(["sh", "-c", script], env=user_install.env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if ": INFO: " not in line]
    assert len(errors) == 1, r.stderr
    assert "LISTEN_FDS" in errors[0] and "telemprobd.socket" in errors[0]
