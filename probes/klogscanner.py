"""klogscanner: kernel oopses, warnings and BUGs from the kernel log, one record each.

Reads /dev/kmsg (non-destructively, unlike the original's syslog(2) READ) from the
position saved in the state directory, so a restart neither loses nor resends an oops;
`--replay` scans a saved kernel log instead.  Nothing is read without opt-in.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator

import click

from telemetry.cli import config_option, mode_options, version_option

from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    Outcome,
    Probe,
    ProbeCommand,
    StateFile,
    Stop,
    read_boot_id,
    run,
)
from .kmsg import Found, KmsgScanner, ScanState, StateError, TextScanner, decode_state, parse_record
from .oops import EndReason, decode_line, oops_payload

PROG = "klogscanner"
KMSG = "/dev/kmsg"
STATE_NAME = "klogscanner.state"
PAYLOAD_VERSION = 1
READ_SIZE = 8192
LINE_MAX = 64 * 1024
SAVE_EVERY = 256  # records between two state writes while nothing is sent

HELP = """\
Usage:
  klogscanner [OPTIONS] - report kernel oopses, warnings and BUGs

Application Options:
  -f, --config_file     Specify a configuration file other than default
      --kmsg PATH       Kernel log device to follow (default /dev/kmsg)
      --once            Stop at the end of the kernel log instead of waiting for more
      --replay FILE     Scan a saved kernel log (dmesg text; - for stdin) and exit
      --dry-run         Print the records instead of sending them; save no state
      --user            Send to your own daemons (telemctl --user start); state in
                        your XDG directories
      --system          Send to the system daemons
  -V, --version         Print the program version
  -h, --help            Show help options

Unlike the original, the kernel log is read from /dev/kmsg without consuming it, from the
position saved in the state directory, so an oops is sent once across restarts; only
kernel messages are scanned, and nothing is read unless telemetry is opted in.
"""


class Reporter:
    """Sends each oops once; keeps the state file in step with what was acknowledged."""

    def __init__(self, probe: Probe, state_file: StateFile | None, state: ScanState, follow: bool):
        self.probe = probe
        self.state_file = state_file
        self.state = state
        self.follow = follow
        self.kmsg = False
        self.pinned: int | None = None
        self.sent = 0
        self.failed = 0
        self._unsaved = 0
        self._written = b""

    def pin(self, seq: int) -> None:
        """Never resume past this kmsg record: its oops is not sent yet."""
        if self.kmsg:
            self.pinned = seq if self.pinned is None else min(self.pinned, seq)

    def save(self, next_seq: int | None = None) -> None:
        if next_seq is not None:
            if self.pinned is not None:
                next_seq = min(next_seq, self.pinned)
            self.state = ScanState(self.state.boot_id, next_seq, self.state.sent)
        if self.state_file is None:
            return
        data = self.state.encode()
        if data == self._written:
            return
        try:
            self.state_file.write(data)
            self._written = data
        except OSError as e:
            self.probe.log.error("cannot save %s: %s", self.state_file.path, e.strerror or e)
        self._unsaved = 0

    def tick(self, next_seq: int) -> None:
        self._unsaved += 1
        if self._unsaved >= SAVE_EVERY:
            self.save(next_seq)

    def report(self, found: Found, dry_run: bool) -> None:
        if found.fingerprint in self.state.sent:
            self.probe.log.info("already sent: %s", found.oops.reason)
            return
        oops = found.oops
        payload = oops_payload(oops, raw_registers=self.probe.privacy_filters_off)
        record = self.probe.record(oops.classification, oops.severity, payload, PAYLOAD_VERSION, truncate=True)
        if oops.ended_by is EndReason.MAX_LINES:
            self.probe.log.warning("oops longer than the line limit; reported as far as read: %s", oops.reason)
        if dry_run:
            sys.stdout.buffer.write(record.header_block() + record.payload + b"\n")
            sys.stdout.flush()
            return
        result = self.probe.send_retrying(record, retry=self.follow)
        if not result.sent and self.probe.stopping:  # stopped while retrying: it goes next run
            self.pin(found.first_seq)
            raise Stop(self.probe.stop_status())
        if result.sent:
            self.sent += 1
            self.probe.log.info("%s %s (%s): %s", result.done, oops.classification, result.message, oops.reason)
            self.state = self.state.remember(found.fingerprint)
            return
        if result.outcome is Outcome.NOT_OPTED_IN:
            self.probe.log.info("%s", result.message)
            self.pin(found.first_seq)
            raise Stop(EXIT_OK)
        if not result.retryable:
            self.failed += 1
            self.probe.log.error("Failed to send record: %s; dropped: %s", result.message, oops.reason)
            return
        self.probe.log.error("Failed to send record: %s; it is sent on the next run", result.message)
        self.pin(found.first_seq)
        raise Stop(EXIT_FAILURE)


def kmsg_lines(fd: int, follow: bool, probe: Probe) -> Iterator[bytes]:
    """Records of /dev/kmsg (one per read) or of a file or pipe in its format (many per
    read); ends when a stop is asked."""
    pending = b""
    while not probe.stopping:
        try:
            chunk = os.read(fd, READ_SIZE)
        except BlockingIOError:
            if not follow:
                return
            yield b""  # idle: a chance to save the position
            if probe.signals is not None:
                probe.signals.wait(None, [fd])
            continue
        except OSError as e:
            if e.errno == errno.EPIPE:  # the ring overwrote records before we read them
                continue
            raise
        if not chunk:
            if pending:
                yield pending
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > LINE_MAX:
            pending = b""
        yield from lines


def scan_kmsg(path: str, reporter: Reporter, boot_id: str, follow: bool, dry_run: bool) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise click.ClickException(f"Cannot read the kernel log {path}: {e.strerror}") from None
    scanner = KmsgScanner(boot_id, reporter.state)
    reporter.state = ScanState(boot_id, scanner.next_seq, reporter.state.sent)
    reporter.kmsg = True
    try:
        for raw in kmsg_lines(fd, follow, reporter.probe):
            if not raw:
                reporter.save(scanner.next_seq)
                continue
            record = parse_record(raw)
            if record is None:
                continue
            for found in scanner.feed(record):
                reporter.report(found, dry_run)
                reporter.save(scanner.next_seq)
            reporter.tick(scanner.next_seq)
        if reporter.probe.stopping:
            raise Stop(reporter.probe.stop_status())
    finally:
        os.close(fd)
        reporter.save(scanner.next_seq)


def scan_text(source: str, reporter: Reporter, dry_run: bool) -> None:
    scanner = TextScanner()
    try:
        stream = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
    except OSError as e:
        raise click.ClickException(f"Cannot read {source}: {e.strerror}") from None
    with stream:
        while not reporter.probe.stopping:
            raw = stream.readline(LINE_MAX)
            if not raw:
                break
            for found in scanner.feed(decode_line(raw.rstrip(b"\n"))):
                reporter.report(found, dry_run)
                reporter.save()
    if reporter.probe.stopping:
        raise Stop(reporter.probe.stop_status())


# The man page's text; --help prints HELP, in the original's layout.
DESCRIPTION = """Report kernel oopses, warnings, BUGs and panics: one record each
(org.clearlinux/kernel/*), read from the kernel log as it is written.

/dev/kmsg is read without consuming it, kernel messages only, from the position saved in
the state directory, so an oops is reported once across restarts; an oops that could not
be sent is read again at the next start.  klogscanner.service runs it (not in containers,
whose kernel log is the host's).  Nothing is read until telemetry is opted in."""

EPILOG = """\b
Exit status:
  0  stopped by SIGTERM, the end of the log with --once or --replay, or not opted in
  1  a bad option, a kernel log it cannot read, or stopped by SIGINT

\b
Files:
  /dev/kmsg                         the kernel log
  /var/lib/telemetry/klogscanner.state  the position read and the oopses already sent

\b
Examples:
  klogscanner --replay /var/log/dmesg --dry-run   the records a saved log would give
  dmesg | klogscanner --replay - --dry-run        the same for the log in memory now
  klogscanner --once                              report what the log holds, then exit
"""


@click.command(PROG, cls=ProbeCommand, usage_text=HELP, help=DESCRIPTION, epilog=EPILOG,
               short_help="report kernel oopses, warnings and BUGs",
               context_settings={"help_option_names": ["-h", "--help"]})
@mode_options
@config_option("-f", "--config_file", "--config-file")
@click.option("--kmsg", "kmsg_path", default=KMSG, metavar="PATH")
@click.option("--once", is_flag=True)
@click.option("--replay", metavar="FILE")
@click.option("--dry-run", is_flag=True)
@version_option
def command(config_file: str | None, kmsg_path: str, once: bool, replay: str | None, dry_run: bool) -> int:
    probe = Probe(PROG, config_file)
    if not dry_run:
        probe.exit_unless_opted_in()
    state_file = None if dry_run else probe.state_file(STATE_NAME)
    state = ScanState()
    if state_file is not None:
        try:
            data = state_file.read()
            state = decode_state(data) if data else ScanState()
        except StateError as e:
            probe.log.warning("%s: %s; starting afresh", state_file.path, e)
        except OSError as e:
            raise click.ClickException(f"Cannot read {state_file.path}: {e.strerror or e}") from None
    follow = replay is None and not once
    reporter = Reporter(probe, state_file, state, follow)
    probe.watch_signals()
    try:
        if replay is not None:
            scan_text(replay, reporter, dry_run)
        else:
            scan_kmsg(kmsg_path, reporter, read_boot_id(dashes=False), follow, dry_run)
    except Stop as e:
        return e.code
    return EXIT_FAILURE if reporter.failed else EXIT_OK


main = run(command, PROG)

if __name__ == "__main__":
    main()
