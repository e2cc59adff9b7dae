"""What every probe shares: the command-line shell, the opt-in rule, sending one record and
telling the user what became of it, and what the long-running probes (klogscanner,
journalprobe, the pstore probes) add: retrying a send, stopping on a signal, the boot id.

Signals are state (`telemetry.daemons.runtime.signals`): SIGTERM or SIGINT only marks the
probe as stopping; its loops look at `Probe.stopping` where stopping is safe, save their
position and end, and a wait between two attempts ends at once.

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

from telemetry import log as log_mod
from telemetry.ack import Ack, AckStatus
from telemetry.bootid import read_boot_id
from telemetry.cli import EXIT_FAILURE, load_config
from telemetry.client import Client, DaemonUnavailable, NotOptedIn, RecordRejected, SendError
from telemetry.fsutil import atomic_write, ensure_dir, read_small
from telemetry.hints import opt_in_phrase
from telemetry.metadata import Metadata, read_metadata
from telemetry.optin import is_opted_in
from telemetry.paths import Paths
from telemetry.record import Record, create_record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see telemetry/__init__.py)
if TYPE_CHECKING:
    import logging
    from typing import Any

    from telemetry.daemons.runtime.signals import Signals

EXIT_OK = 0
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
        """The daemon kept the record (delivered now or, when deferred, later)."""
        return self.outcome is Outcome.SENT

    @property
    def deferred(self) -> bool:
        """Kept, but held back by the rate limit (strategy spool): delivered later."""
        return self.sent and self.ack is not None and self.ack.status is AckStatus.DEFERRED

    @property
    def done(self) -> str:
        """What became of a kept record, for a log line: "sent" or "queued for later"."""
        return "queued for later (over the rate limit)" if self.deferred else "sent"

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
            f"Run {opt_in_phrase(paths)} to opt in")


class Probe:
    """One run of a probe: its paths, config and client, and the shared policies."""

    signals: Signals | None = None  # set by watch_signals()

    def __init__(self, name: str, config_file: str | None = None, paths: Paths | None = None,
                 mode: str | None = None):
        self.paths, self.config = load_config(config_file, paths, mode)
        self.client = Client(self.paths, self.config, config_file)
        self.name = name
        log_mod.setup_later(name, self.config.log_level)
        if self.config.notices:
            self.config.log_notices(self.log)

    @property
    def log(self) -> logging.Logger:
        """The probe's logger; logging is set up when it is first used (telemetry.log)."""
        return log_mod.logger(self.name)

    def watch_signals(self) -> Signals:
        """From now on SIGTERM and SIGINT mark the probe as stopping (see `stopping`)
        instead of ending it wherever it is."""
        if self.signals is None:
            from telemetry.daemons.runtime.signals import Signals

            self.signals = Signals().install()
        return self.signals

    @property
    def stopping(self) -> bool:
        return self.signals is not None and self.signals.stop_requested

    def stop_status(self) -> int:
        """The exit status of a probe stopped by a signal: 0 for SIGTERM (a service stop),
        1 for SIGINT."""
        signum = self.signals.stop_signal if self.signals is not None else None
        return EXIT_OK if signum in (None, signal.SIGTERM) else EXIT_FAILURE

    def sleep(self, seconds: float) -> None:
        """Sleep, ending at once when a stop is asked."""
        if self.signals is not None:
            self.signals.wait(seconds)
        else:
            time.sleep(seconds)

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
        twice as long each time up to RETRY_MAX_DELAY, until the outcome is final or a stop
        is asked (then the last failure is returned: the caller looks at `stopping`)."""
        delay = 1.0
        while True:
            result = self.send(record)
            if result.sent or not retry or not result.retryable or self.stopping:
                return result
            self.log.warning("Failed to send record: %s; retrying in %.0f s", result.message, delay)
            self.sleep(delay)
            if self.stopping:
                return result
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
    """Ends a long-running probe's scan with this exit status.  Raised by the probe's own
    code where it decided to stop (never from a signal handler)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


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
    "opt_in_hint",
    "read_boot_id",
]
