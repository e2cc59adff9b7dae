"""journalprobe: failed units (and, with the privacy override, error messages) from the
systemd journal, one record per entry.

The position is kept as a journal cursor in the state directory: a restart resumes
after the last entry handled, so nothing is sent twice and nothing is skipped; a record
the daemon could not take is retried, not dropped.  What is selected is decided by
`journal_select` on fields journald sets itself.
"""

from __future__ import annotations

import os

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
from .journal_select import (
    CLASSIFICATION,
    ERROR_PRIORITIES,
    PAYLOAD_VERSION,
    SEVERITY,
    Entry,
    entry_from_reader,
    journal_payload,
    selects,
)

PROG = "journalprobe"
CURSOR_NAME = "journalprobe.cursor"
CURSOR_MAX = 4096
WAIT_SECONDS = 5.0

HELP = """\
Usage:
  journalprobe [OPTIONS] - collect data from systemd journal

Help Options:
  -h, --help            Show help options

Application Options:
  -f, --config_file     Specify a configuration file other than default
  -t, --tail            Don't process entries already in the journal
  -V, --version         Print the program version
  -D, --directory DIR   Read the journal files in DIR instead of the local journal
      --once            Stop after the entries already in the journal
      --user            Send to your own daemons (telemctl --user start); state in
                        your XDG directories
      --system          Send to the system daemons

Unlike the original: the position is saved, so a restart resumes where it stopped
(-t only applies to the very first start); a failed send is retried, not dropped;
entries are selected on fields journald records itself (a unit exit reported by the
system manager, PID 1, not any line carrying EXIT_CODE=exited), and entries logged before
opting in are not sent.

"""


class JournalProbe:
    def __init__(self, probe: Probe, reader, cursor_file: StateFile, boot_id: str, follow: bool):
        self.probe = probe
        self.reader = reader
        self.cursor_file = cursor_file
        self.boot_id = boot_id
        self.follow = follow
        self.override = probe.privacy_filters_off
        self.since_usec = _opt_in_usec(probe)
        self.cursor: str | None = None
        self.saved: str | None = None
        self.pending: dict | None = None
        self.sent = 0

    def save(self) -> None:
        if self.cursor is None or self.cursor == self.saved:
            return
        try:
            self.cursor_file.write(self.cursor.encode())
            self.saved = self.cursor
        except OSError as e:
            self.probe.log.error("cannot save %s: %s", self.cursor_file.path, e.strerror or e)

    def position(self, tail: bool) -> None:
        saved = _read_cursor(self.cursor_file, self.probe)
        if saved:
            try:
                self.reader.seek_cursor(saved)
                first = self.reader.get_next()
                self.cursor = self.saved = saved
                if first and not self.reader.test_cursor(saved):
                    self.pending = first  # the saved entry is gone: this one is new
                return
            except OSError as e:
                self.probe.log.warning("saved journal position unusable (%s); starting afresh", e)
        if tail:
            self.reader.seek_tail()
            last = self.reader.get_previous()
            if last:
                self.cursor = entry_from_reader(last).cursor
        else:
            self.reader.seek_head()

    def drain(self) -> None:
        """Handle every entry after the current position (until a stop is asked)."""
        while not self.probe.stopping:
            raw, self.pending = self.pending or self.reader.get_next(), None
            if not raw:
                break
            entry = entry_from_reader(raw)
            if selects(entry, self.boot_id, privacy_override=self.override, since_usec=self.since_usec):
                self.deliver(entry)
            self.cursor = entry.cursor or self.cursor
        self.save()

    def deliver(self, entry: Entry) -> None:
        record = self.probe.record(CLASSIFICATION, SEVERITY, journal_payload(entry), PAYLOAD_VERSION, truncate=True)
        result = self.probe.send_retrying(record, retry=self.follow)
        if not result.sent and self.probe.stopping:  # stopped while retrying: it goes next run
            self.save()
            raise Stop(self.probe.stop_status())
        if result.sent:
            self.sent += 1
            self.probe.log.info("%s %s (%s)", result.done, CLASSIFICATION, result.message)
            self.cursor = entry.cursor or self.cursor
            self.save()
            return
        if result.outcome is Outcome.NOT_OPTED_IN:
            self.probe.log.info("%s", result.message)
            self.save()
            raise Stop(EXIT_OK)
        if not result.retryable:
            self.probe.log.error("Failed to send record: %s; entry skipped", result.message)
            return
        self.probe.log.error("Failed to send record: %s; it is sent on the next run", result.message)
        self.save()
        raise Stop(EXIT_FAILURE)


def _opt_in_usec(probe: Probe) -> int | None:
    try:
        return int(os.lstat(probe.paths.opt_in_file).st_mtime * 1_000_000)
    except OSError:
        return None


def _read_cursor(cursor_file: StateFile, probe: Probe) -> str | None:
    try:
        data = cursor_file.read()
    except OSError as e:
        probe.log.warning("cannot read %s: %s", cursor_file.path, e.strerror or e)
        return None
    if not data:
        return None
    text = data[:CURSOR_MAX].decode("ascii", errors="replace").strip()
    if not text or not text.isprintable() or "\ufffd" in text:
        probe.log.warning("%s holds no journal cursor; starting afresh", cursor_file.path)
        return None
    return text


def open_reader(directory: str | None, boot_id: str, override: bool):
    from systemd import journal

    try:
        reader = journal.Reader(path=directory) if directory else journal.Reader(flags=journal.LOCAL_ONLY)
    except OSError as e:
        raise click.ClickException(f"Failed to open journal: {e.strerror or e}") from None
    # A narrowing for speed only: `selects` decides.
    if override:
        reader.add_match(_BOOT_ID=boot_id)
        for prio in sorted(ERROR_PRIORITIES):
            reader.add_match(PRIORITY=prio)
        reader.add_disjunction()
    reader.add_match(_BOOT_ID=boot_id, EXIT_CODE="exited")
    return reader


# The man page's text; --help prints HELP, in the original's layout.
DESCRIPTION = """Report failed units: one record per unit that a service manager logged as
failed in the systemd journal (org.clearlinux/journal/error), carrying that message.

Entries are selected on the fields journald records itself, so no program can forge one.
The journal position is saved, so a restart resumes where it stopped; -t makes the very
first start skip what is already in the journal.  journal-probe.service (or
journal-probe-tail.service, with -t) runs it.  Nothing is read until telemetry is opted in."""

EPILOG = """\b
Exit status:
  0  stopped by SIGTERM, the end of the journal with --once, or not opted in
  1  a bad option, a journal it cannot open, or stopped by SIGINT

\b
Files:
  /var/lib/telemetry/journalprobe.cursor  the position in the journal

\b
Examples:
  journalprobe --once                        report the failures logged so far, then exit
  journalprobe -D /var/log/journal/ID --once  the same from another machine's journal files
"""


@click.command(PROG, cls=ProbeCommand, usage_text=HELP, help=DESCRIPTION, epilog=EPILOG,
               short_help="report failed units from the systemd journal",
               context_settings={"help_option_names": ["-h", "--help"]})
@mode_options
@config_option("-f", "--config-file", "--config_file")
@click.option("-t", "--tail", is_flag=True)
@click.option("-D", "--directory", metavar="DIR")
@click.option("--once", is_flag=True)
@version_option
def command(config_file: str | None, tail: bool, directory: str | None, once: bool) -> int:
    probe = Probe(PROG, config_file)
    probe.exit_unless_opted_in()
    boot_id = read_boot_id(dashes=False)
    if not boot_id:
        click.echo(f"{PROG}: sd_id128_get_boot failed: cannot read the boot id", err=True)
        return EXIT_FAILURE
    reader = open_reader(directory, boot_id, probe.privacy_filters_off)
    jp = JournalProbe(probe, reader, probe.state_file(CURSOR_NAME), boot_id, follow=not once)
    signals = probe.watch_signals()
    try:
        jp.position(tail)
        jp.drain()
        while not once and not probe.stopping:
            # Not reader.wait(): a signal would end it with EINTR, an error to it.
            signals.wait(WAIT_SECONDS, [reader.fileno()])
            reader.process()
            jp.drain()
        if probe.stopping:
            jp.save()
            return probe.stop_status()
    except Stop as e:
        jp.save()
        return e.code
    except OSError as e:
        jp.save()
        click.echo(f"{PROG}: Failed to read journal entry: {e.strerror or e}", err=True)
        return EXIT_FAILURE
    finally:
        reader.close()
    return EXIT_OK


main = run(command, PROG)

if __name__ == "__main__":
    main()
