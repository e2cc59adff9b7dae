"""pstoreprobe: kernel oopses and panics from pstore crash dumps, one record each.

Reads the dumps pstoreclean copied into the pstore cache directory, runs them through
klogscanner's oops parser and sends what it finds.  A dump's files are removed only
once every record from it was acknowledged; a dump that could not be sent stays for the
next run, and one already sent is not sent again (its fingerprint is kept).
"""

from __future__ import annotations

import json
import os

import click

from telemetry.cli import config_option, mode_options, version_option

from .common import EXIT_FAILURE, EXIT_OK, Outcome, Probe, ProbeCommand, StateFile, run
from .oops import oops_payload
from .pstore import Chunk, Dump, assemble, dump_oopses, parse_name
from .safedir import SafeDir, UnsafeEntry

PROG = "pstoreprobe"
PAYLOAD_VERSION = 1
FILE_MAX = 1 << 20  # a pstore record is a few KiB; anything bigger is cut here
STATE_NAME = "pstoreprobe.state"
SENT_MEMORY = 256

USAGE = """\
%s: Usage
  -f,  --config_file    This overides the other parameters
  -h,  --help           Display this help message
       --cache-dir DIR  Directory of the dumps pstoreclean saved (default: the pstore cache)
       --dry-run        Print the records instead of sending them; remove nothing
       --user           Send to your own daemons (telemctl --user start)
       --system         Send to the system daemons
  -V,  --version        Print the program version

Unlike the original, a dump's files are removed only after all its records were
acknowledged, symbolic links and other non-regular files are left alone, and reads
are capped.
"""


def load_sent(state: StateFile, probe: Probe) -> list[str]:
    try:
        data = state.read()
        sent = json.loads(data) if data else []
        if isinstance(sent, list) and all(isinstance(s, str) for s in sent):
            return sent
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        pass
    probe.log.warning("%s is unreadable; starting afresh", state.path)
    return []


def read_chunks(d: SafeDir, probe: Probe) -> list[Chunk]:
    chunks = []
    for name in d.names():
        if parse_name(name) is None:
            continue
        try:
            entry = d.read(name, FILE_MAX)
        except UnsafeEntry as e:
            probe.log.warning("%s", e)
            continue
        except OSError as e:
            probe.log.error("cannot read %s: %s", os.path.join(d.path, name), e.strerror or e)
            continue
        if entry.truncated:
            probe.log.warning("%s is larger than %d bytes; only the start is read", name, FILE_MAX)
        chunk = Chunk.from_file(name, entry.data)
        if chunk is not None:
            chunks.append(chunk)
    return chunks


class Memory:
    """Fingerprints of the oopses already acknowledged, kept across runs."""

    def __init__(self, state: StateFile | None, probe: Probe):
        self.state = state
        self.sent = load_sent(state, probe) if state is not None else []

    def __contains__(self, fp: str) -> bool:
        return fp in self.sent

    def add(self, fp: str) -> None:
        self.sent = (self.sent + [fp])[-SENT_MEMORY:]
        if self.state is not None:
            self.state.write(json.dumps(self.sent).encode())


def send_dump(probe: Probe, dump: Dump, memory: Memory, dry_run: bool) -> bool:
    """True when every oops of the dump was acknowledged (or printed, with --dry-run)."""
    dump_fp = dump.fingerprint()
    for n, oops in enumerate(dump_oopses(dump), start=1):
        if probe.stopping:
            return False
        fp = f"{dump_fp}:{n}"
        if fp in memory:
            continue
        payload = oops_payload(oops, raw_registers=probe.privacy_filters_off)
        record = probe.record(oops.classification, oops.severity, payload, PAYLOAD_VERSION, truncate=True)
        if dry_run:
            click.echo(record.header_block() + record.payload + b"\n", nl=False)
            continue
        result = probe.send(record)
        if result.sent:
            probe.log.info("%s %s from %s (oops %d): %s", result.done, oops.classification, dump.names[0], n,
                           oops.reason)
            memory.add(fp)
            continue
        if result.outcome is Outcome.NOT_OPTED_IN:
            probe.log.info("%s", result.message)
        else:
            probe.log.error("Failed to send record: %s; %s is kept for the next run", result.message,
                            ", ".join(dump.names))
        return False
    return True


# The man page's text; --help prints the original's USAGE.
HELP = """Report the kernel crash dumps pstoreclean saved from pstore: one record per oops in
them (org.clearlinux/kernel/*, as klogscanner reports a live kernel's).

A dump's files are removed from the cache only after every record made from it was
acknowledged; links and other non-regular files are left alone, and reads are capped.
pstore-probe.service runs it at boot, after pstore-clean.service.  Nothing is sent until
telemetry is opted in ('telemctl opt-in')."""

EPILOG = """\b
Exit status:
  0  every dump was reported (or there was none), or not opted in
  1  a bad option, or a record was not kept (its dump stays for the next run)

\b
Files:
  /var/cache/telemetry/pstore/          the dumps pstoreclean saved
  /var/lib/telemetry/pstoreprobe.state  the dumps already reported

\b
Examples:
  pstoreprobe --dry-run                 the records the saved dumps would give
  pstoreprobe --cache-dir /tmp/dumps    report dumps copied from another machine
"""


@click.command(PROG, cls=ProbeCommand, usage_text=USAGE, help=HELP, epilog=EPILOG,
               short_help="report the kernel crash dumps saved from pstore",
               context_settings={"help_option_names": ["-h", "--help"]})
@mode_options
@config_option("-f", "--config_file", "--config-file")
@click.option("--cache-dir", metavar="DIR")
@click.option("--dry-run", is_flag=True)
@version_option
def command(config_file: str | None, cache_dir: str | None, dry_run: bool) -> int:
    probe = Probe(PROG, config_file)
    if not dry_run:
        probe.exit_unless_opted_in()
    directory = cache_dir or probe.paths.pstore_cache_dir
    try:
        d = SafeDir(directory)
    except FileNotFoundError:
        probe.log.info("no pstore dumps: %s does not exist", directory)
        return EXIT_OK
    except OSError as e:
        click.echo(f"{PROG}: Could not open pstore dump directory {directory}: {e.strerror or e}", err=True)
        return EXIT_FAILURE
    memory = Memory(None if dry_run else probe.state_file(STATE_NAME), probe)
    status = EXIT_OK
    probe.watch_signals()
    with d:
        for dump in assemble(read_chunks(d, probe)):
            if probe.stopping:
                return probe.stop_status()
            if not dump.complete:
                probe.log.warning("dump %d is incomplete (%s); left in place", dump.count, ", ".join(dump.names))
                continue
            if not send_dump(probe, dump, memory, dry_run):
                if probe.stopping:
                    return probe.stop_status()
                status = EXIT_FAILURE if probe.opted_in else EXIT_OK
                break
            if dry_run:
                continue
            for name in dump.names:
                try:
                    d.unlink(name)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    probe.log.error("Failed to remove %s: %s", os.path.join(directory, name), e.strerror or e)
                    status = EXIT_FAILURE
    return status


main = run(command, PROG)

if __name__ == "__main__":
    main()
