"""What every probe shares: the command-line shell, the opt-in rule, sending one record and
telling the user what became of it, and what the long-running probes (klogscanner,
journalprobe) add: retrying a send, stopping on a signal, the boot id.

The opt-in rule is the same for every probe: when the machine's owner has not opted in, a
probe collects nothing, sends nothing, prints one info line and exits 0, so a timer or a
unit that fires anyway is not reported as failed.  A record the daemon refuses (rate
limited, invalid, no space …) is reported with the daemon's reason, never as a success.
"""

from __future__ import annotations

import enum
import functools
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from telemetry import log as log_mod
from telemetry.ack import Ack, AckStatus
from telemetry.cli import EXIT_FAILURE, load_config
from telemetry.client import Client, DaemonUnavailable, NotOptedIn, RecordRejected, SendError
from telemetry.fsutil import atomic_write, ensure_dir, read_small
from telemetry.metadata import Metadata, read_metadata
from telemetry.optin import is_opted_in, opt_in_command
from telemetry.paths import Paths
from telemetry.record import Record, create_record

EXIT_OK = 0
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
RETRY_MAX_DELAY = 60.0
# Worth sending again later: the daemon is over a limit or could not keep the record now.
_RETRYABLE = frozenset({AckStatus.RATE_LIMITED, AckStatus.BUSY, AckStatus.NO_SPACE, AckStatus.ERROR})


class Outcome(enum.Enum):
    SENT = "sent"
    NOT_OPTED_IN = "not-opted-in"
    REJECTED = "rejected"
    UNAVAILABLE = "unavailable"
    FAILED = "failed"


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    message: str = ""
    ack: Ack | None = None

    @property
    def sent(self) -> bool:
        return self.outcome is Outcome.SENT

    @property
    def retryable(self) -> bool:
        """Worth trying again later: the daemon was away, busy or over its rate limit."""
        if self.outcome is Outcome.UNAVAILABLE:
            return True
        if self.outcome is Outcome.REJECTED and self.ack is not None:
            return self.ack.status in _RETRYABLE
        return self.outcome is Outcome.FAILED


def opt_in_hint(paths: Paths) -> str:
    return (f"not opted in to telemetry ({paths.opt_in_file} is missing); nothing collected or sent. "
            f"Run '{opt_in_command(paths)}' to opt in")


class Probe:
    """One run of a probe: its paths, config and client, and the shared policies."""

    def __init__(self, name: str, config_file: str | None = None, paths: Paths | None = None):
        self.paths, self.config = load_config(config_file, paths)
        self.client = Client(self.paths, self.config, config_file)
        self.log = log_mod.setup(name, self.config.log_level)

    @functools.cached_property
    def metadata(self) -> Metadata:
        """Read once per run: a probe reporting many events does not re-read /proc and /sys."""
        return read_metadata()

    def record(self, classification: str, severity: int, payload: str | bytes, payload_version: int = 1,
               **kw: Any) -> Record:
        return create_record(classification, severity, payload, payload_version, metadata=self.metadata, **kw)

    @property
    def opted_in(self) -> bool:
        return is_opted_in(self.paths)

    def exit_unless_opted_in(self) -> None:
        if not self.opted_in:
            self.log.info("%s", opt_in_hint(self.paths))
            sys.exit(EXIT_OK)

    @property
    def privacy_filters_off(self) -> bool:
        """The admin's override file: raw register values, wider journal selection."""
        return os.path.lexists(self.paths.no_privacy_filters_file)

    def send(self, record: Record, on_behalf_of: Any = None) -> SendResult:
        """Send `record`; `on_behalf_of` (telemetry.client.Credentials, root only) names the
        process the record is about, whose user telemprobd then counts it for."""
        try:
            ack = self.client.send(record, on_behalf_of=on_behalf_of)
        except NotOptedIn:
            return SendResult(Outcome.NOT_OPTED_IN, opt_in_hint(self.paths))
        except RecordRejected as e:
            return SendResult(Outcome.REJECTED, str(e), e.ack)
        except DaemonUnavailable as e:
            return SendResult(Outcome.UNAVAILABLE, str(e))
        except SendError as e:
            return SendResult(Outcome.FAILED, str(e))
        return SendResult(Outcome.SENT, str(ack), ack)

    def send_retrying(self, record: Record, retry: bool) -> SendResult:
        """`send`; with `retry`, a retryable failure is sent again after 1 s, then after
        twice as long each time up to RETRY_MAX_DELAY, until the outcome is final."""
        delay = 1.0
        while True:
            check_stop()
            result = self.send(record)
            if result.sent or not retry or not result.retryable:
                return result
            self.log.warning("Failed to send record: %s; retrying in %.0f s", result.message, delay)
            check_stop()
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY)

    def state_file(self, name: str) -> StateFile:
        return StateFile(os.path.join(self.paths.state_dir, name))


class StateFile:
    """A small file under the state directory, replaced atomically, never read through a link."""

    LIMIT = 1 << 20

    def __init__(self, path: str):
        self.path = path

    def read(self) -> bytes | None:
        try:
            return read_small(self.path, self.LIMIT)
        except FileNotFoundError:
            return None

    def write(self, data: bytes) -> None:
        ensure_dir(os.path.dirname(self.path), 0o700)
        atomic_write(self.path, data, 0o600)


class Stop(Exception):
    """Ends a long-running probe's scan with this exit status."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


# The exit status a stop signal asked for.  The signal raises Stop wherever the probe is, and
# a few places swallow it (logging's handlers catch every exception raised while they
# write), so the request is also kept here and raised again at the next check_stop().
_stop_requested: int | None = None


def stop_on_signals() -> None:
    """SIGTERM (a service stop) ends the scan with status 0, SIGINT with 1; either way the
    probe saves its position on the way out."""

    def stop(signum: int, frame: object) -> None:
        global _stop_requested
        _stop_requested = EXIT_OK if signum == signal.SIGTERM else EXIT_FAILURE
        raise Stop(_stop_requested)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def check_stop() -> None:
    """Raise the Stop a signal asked for, if it was swallowed on its way."""
    if _stop_requested is not None:
        raise Stop(_stop_requested)


def read_boot_id(path: str = BOOT_ID_FILE) -> str:
    """This boot's id as 32 hex digits (as journald writes _BOOT_ID); "" when unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read(64).decode("ascii", "replace").strip().replace("-", "")
    except OSError:
        return ""


def __getattr__(name: str) -> Any:
    """The click shell (`ProbeCommand`, `run`) is loaded by the probes that parse with it,
    so a probe that only sends (crashprobe as the kernel starts it) never imports click."""
    if name in ("ProbeCommand", "run"):
        from . import probe_cli

        return getattr(probe_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "Outcome",
    "Probe",
    "SendResult",
    "StateFile",
    "Stop",
    "check_stop",
    "opt_in_hint",
    "read_boot_id",
    "stop_on_signals",
]
