"""Every hint names a telemctl command line that works as written in its mode."""

from __future__ import annotations

import os

import pytest

from telemetry import hints
from telemetry.paths import Paths


@pytest.fixture
def user_paths(user_install) -> Paths:
    return user_install.paths


def test_user_mode_puts_the_mode_before_the_command(user_paths):
    assert hints.telemctl_command(user_paths, "opt-in") == "telemctl --user opt-in"
    assert hints.opt_in_phrase(user_paths) == "'telemctl --user opt-in'"
    assert hints.start_phrase(user_paths) == "start it with 'telemctl --user start'"


def test_system_mode_says_root_and_points_to_user_mode_without_systemd(monkeypatch, tmp_path):
    paths = Paths.system()
    monkeypatch.setattr(hints, "SYSTEMD_RUNTIME_DIR", str(tmp_path))  # systemd "running"
    root = os.geteuid() == 0
    assert hints.opt_in_phrase(paths) == "'telemctl opt-in'" + ("" if root else " as root")
    assert hints.start_phrase(paths).startswith("start it with 'telemctl start'")
    monkeypatch.setattr(hints, "SYSTEMD_RUNTIME_DIR", str(tmp_path / "absent"))
    text = hints.start_phrase(paths)
    assert "systemd is not running" in text and "'telemctl --user start'" in text and "--user" in text
