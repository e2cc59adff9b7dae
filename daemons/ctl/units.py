"""System mode: the original's systemd units, driven with systemctl.

Every call is an argument vector (never a shell, spec/defects.md E 25), one unit at a
time as the original, so one missing unit does not stop the others.  Unlike the
original, only systemctl's exit status decides failure (it may print notices on
stdout), and each failure message ends its line.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from telemetry.errors import TelemetryError
from telemetry.hints import SYSTEMD_RUNTIME_DIR

# The original's two lists (src/telemctl.c), in its order.
TRIGGER_UNITS: tuple[str, ...] = (
    "hprobe.timer",
    "telemprobd.socket",
    "telempostd.path",
    "klogscanner.service",
    "journal-probe-tail.service",
)
SERVICE_UNITS: tuple[str, ...] = (
    "hprobe.service",
    "pstore-probe.service",
    "telemprobd.service",
    "telempostd.service",
    "journal-probe.service",
)
# Shipped beyond the original's lists: pstore-clean.service (pulled in at boot by
# pstore-probe.service).  Stopped with the services, and enabled and disabled with every
# unit, so that opt-out leaves no unit enabled (spec/defects.md E 26).
OTHER_SERVICE_UNITS: tuple[str, ...] = ("pstore-clean.service",)
ALL_UNITS: tuple[str, ...] = TRIGGER_UNITS + SERVICE_UNITS + OTHER_SERVICE_UNITS
# journal-probe.service and journal-probe-tail.service follow the journal from one saved
# position and conflict: enabling both would make boot start one and stop the other.  The
# tail is the one started (the original's trigger list); the other is an admin's choice.
ALTERNATIVE_UNITS: tuple[str, ...] = ("journal-probe.service",)
ENABLED_UNITS: tuple[str, ...] = tuple(u for u in ALL_UNITS if u not in ALTERNATIVE_UNITS)
# Shipped but enabled only by an admin who chose it (crashprobe beside systemd-coredump):
# stop and opt-out's disable include it, so nothing keeps running; enable does not.
OPTIONAL_UNITS: tuple[str, ...] = ("crashprobe-journal.service",)
# What is-active reports: the daemon's name and the unit that activates it.
ACTIVATION_UNITS: tuple[tuple[str, str], ...] = (
    ("telemprobd", "telemprobd.socket"),
    ("telempostd", "telempostd.path"),
)
DAEMON_SERVICES: dict[str, str] = {"telemprobd": "telemprobd.service", "telempostd": "telempostd.service"}

SYSTEMCTL = "systemctl"
SLOW_NOTICE = 1.0  # seconds before a stop or start (systemctl's or our own) says what it waits for
SYSTEMD_TMPFILES = "systemd-tmpfiles"


class SystemdError(TelemetryError):
    """systemd cannot be driven here; the message says why and what to do instead."""


class SystemdNotRunning(SystemdError):
    def __init__(self) -> None:
        super().__init__(
            f"systemd is not running on this machine ({SYSTEMD_RUNTIME_DIR} is missing), so the "
            "system services cannot be managed; use 'telemctl --user start' to run the daemons "
            "as your own background processes"
        )


def failure_message(action: str, unit: str) -> str:
    return f"Failed to {action} {unit}. Continuing..."


@dataclass(frozen=True)
class UnitResult:
    action: str
    unit: str
    returncode: int
    output: str  # systemctl's stdout, stripped

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def messages(self) -> tuple[str, ...]:
        """The lines to print on stderr for this result (none when it succeeded)."""
        if self.ok:
            return ()
        lines = tuple(line for line in self.output.splitlines() if line.strip())
        return (*lines, failure_message(self.action, self.unit))


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    # stderr goes straight to the terminal, as the original lets it.
    return subprocess.run(list(argv), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                          errors="replace", check=False)


class Systemctl:
    """The few systemctl calls telemctl makes, each an argument vector."""

    def __init__(self, binary: str = SYSTEMCTL, runner: Runner = _run, say: Callable[[str], None] | None = None):
        path = shutil.which(binary)
        if path is None:
            raise SystemdError(f"{binary} is not installed; system mode needs systemd")
        self.binary = path
        self._run = runner
        self.say = say  # hears what a call that takes more than SLOW_NOTICE waits for

    def unit(self, action: str, unit: str) -> UnitResult:
        timer = None
        if self.say is not None:
            timer = threading.Timer(SLOW_NOTICE, self.say, (f"waiting for 'systemctl {action} {unit}'",))
            timer.daemon = True
            timer.start()
        try:
            done = self._run([self.binary, action, unit])
        finally:
            if timer is not None:
                timer.cancel()
        return UnitResult(action, unit, done.returncode, (done.stdout or "").strip())

    def each(self, action: str, units: Iterable[str], report: Callable[[str], None]) -> int:
        """Run `action` on every unit; failures are reported and the rest still tried."""
        result = 0
        for unit in units:
            outcome = self.unit(action, unit)
            for line in outcome.messages():
                report(line)
            if not outcome.ok:
                result = 1
        return result

    def is_active(self, unit: str) -> str:
        """systemctl's word for the unit (active, inactive, failed, …); its status is ignored."""
        done = self._run([self.binary, "is-active", unit])
        words = (done.stdout or "").split()
        return words[-1] if words else "unknown"

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        done = self._run([self.binary, "show", unit, "--property=" + ",".join(properties)])
        values: dict[str, str] = {}
        for line in (done.stdout or "").splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value
        return values


def create_work_dirs(tmpfiles_conf: str, report: Callable[[str], None], runner: Runner = _run) -> int:
    """`systemd-tmpfiles --create` on our conf, as the original's start does."""
    binary = shutil.which(SYSTEMD_TMPFILES)
    if binary is None:
        report(f"{SYSTEMD_TMPFILES} is not installed; cannot create the work directories")
        return 1
    done = runner([binary, "--create", tmpfiles_conf])
    lines = [line for line in (done.stdout or "").splitlines() if line.strip()]
    if lines:
        report(lines[-1])
    if done.returncode != 0:
        report(f"Failed to create the directories of {tmpfiles_conf}. Continuing...")
        return 1
    return 0


def start(ctl: Systemctl, tmpfiles_conf: str, report: Callable[[str], None]) -> int:
    result = create_work_dirs(tmpfiles_conf, report) if tmpfiles_conf else 0
    return ctl.each("start", TRIGGER_UNITS, report) | result


def stop(ctl: Systemctl, report: Callable[[str], None]) -> int:
    """The trigger units first, so that nothing starts a service again while it stops."""
    return ctl.each("stop", ALL_UNITS + OPTIONAL_UNITS, report)


def enable(ctl: Systemctl, report: Callable[[str], None]) -> int:
    """Undo opt-out's disable, so the units start at boot again (gated by the opt-in file)."""
    return ctl.each("enable", ENABLED_UNITS, report)


def disable(ctl: Systemctl, report: Callable[[str], None]) -> int:
    """Opt-out disables every unit, not only stops it (spec/defects.md E 26)."""
    return ctl.each("disable", ALL_UNITS + OPTIONAL_UNITS, report)


def missing_units(ctl: Systemctl, units: Iterable[str]) -> tuple[str, ...]:
    """Units systemd does not know: the package's units are not installed."""
    return tuple(u for u in units if ctl.show(u, "LoadState").get("LoadState") == "not-found")
