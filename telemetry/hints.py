"""What the programs tell a user to run: telemctl command lines that work as written in
the mode at hand.

telemctl takes --user/--system before the command (`telemctl --user opt-in`; the
command itself has no such option), system-mode commands other than is-active and
status need root, and system mode needs systemd running.  Every hint is built here so
none of them can name a command that fails.
"""

from __future__ import annotations

import os

from .paths import Mode, Paths

SYSTEMD_RUNTIME_DIR = "/run/systemd/system"


def systemd_running(runtime_dir: str | None = None) -> bool:
    """sd_booted()'s test: the directory exists only when systemd is PID 1."""
    return os.path.isdir(runtime_dir or SYSTEMD_RUNTIME_DIR)


def telemctl_command(paths: Paths, command: str) -> str:
    return f"telemctl --user {command}" if paths.mode is Mode.USER else f"telemctl {command}"


def run_phrase(paths: Paths, command: str) -> str:
    """`'telemctl … COMMAND'`, with "as root" when system mode needs it and we are not."""
    text = f"'{telemctl_command(paths, command)}'"
    if paths.mode is Mode.SYSTEM and os.geteuid() != 0:
        text += " as root"
    return text


def opt_in_phrase(paths: Paths) -> str:
    return run_phrase(paths, "opt-in")


def start_phrase(paths: Paths) -> str:
    """How to get telemprobd listening: in system mode without systemd, that is user mode."""
    if paths.mode is Mode.SYSTEM and not systemd_running():
        return ("systemd is not running, so the system daemons cannot run here; run your own with "
                "'telemctl --user start' and give the probe --user")
    return f"start it with {run_phrase(paths, 'start')}"
