"""pstoreclean: move crash dumps out of pstore into the pstore cache, for pstoreprobe.

pstore has little room (an EFI variable store or a small RAM region), so entries are
moved out at boot.  Unlike the original, an entry is removed from pstore only after its
copy is written and fsynced; the cache keeps a copy instead of being emptied first (its
dumps are pstoreprobe's to remove once sent); names are opened through directory
descriptors without following links; and nothing happens without opt-in.
"""

from __future__ import annotations

import os

import click

from telemetry.cli import config_option, mode_options, version_option

from .common import EXIT_FAILURE, EXIT_OK, Probe, ProbeCommand, run
from .safedir import SafeDir, UnsafeEntry

PROG = "pstoreclean"
PSTORE_DIR = "/sys/fs/pstore"
ENTRY_MAX = 4 << 20
COPY_MODE = 0o444

USAGE = """\
Usage:
  pstoreclean [OPTIONS] - move pstore crash dumps into the pstore cache

Application Options:
  -f, --config_file     Specify a configuration file other than default
      --pstore-dir DIR  Mounted pstore file system (default /sys/fs/pstore)
      --cache-dir DIR   Where the dumps are kept for pstoreprobe (default: the pstore cache)
      --user            Use your own XDG directories (user mode)
      --system          Use the system directories
  -V, --version         Print the program version
  -h, --help            Show help options

Unlike the original, an entry leaves pstore only once its copy is safely written, the
cache is not emptied first, links are never followed, and it runs only when opted in.
"""


# The man page's text; --help prints USAGE, in the original's layout.
HELP = """Move the crash dumps the kernel left in pstore (/sys/fs/pstore) into the pstore
cache, where pstoreprobe reports them, so that pstore has room for the next crash.

An entry leaves pstore only once its copy is written and synced; the cache is not emptied
first and links are never followed.  pstore-clean.service runs it as root at boot.  It does
nothing until telemetry is opted in ('telemctl opt-in')."""

EPILOG = """\b
Exit status:
  0  every entry was moved (or there was none), or not opted in
  1  a bad option, or an entry could not be moved (it stays in pstore)

\b
Files:
  /sys/fs/pstore/              the kernel's crash dumps
  /var/cache/telemetry/pstore/  where they are kept for pstoreprobe

\b
Examples:
  pstoreclean && pstoreprobe    what pstore-clean.service and pstore-probe.service do at boot
"""


@click.command(PROG, cls=ProbeCommand, usage_text=USAGE, help=HELP, epilog=EPILOG,
               short_help="move pstore crash dumps into the pstore cache",
               context_settings={"help_option_names": ["-h", "--help"]})
@mode_options
@config_option("-f", "--config_file", "--config-file")
@click.option("--pstore-dir", default=PSTORE_DIR, metavar="DIR")
@click.option("--cache-dir", metavar="DIR")
@version_option
def command(config_file: str | None, pstore_dir: str, cache_dir: str | None) -> int:
    probe = Probe(PROG, config_file)
    probe.exit_unless_opted_in()
    cache_path = cache_dir or probe.paths.pstore_cache_dir
    try:
        source = SafeDir(pstore_dir)
    except FileNotFoundError:
        probe.log.info("no pstore entries: %s does not exist", pstore_dir)
        return EXIT_OK
    except OSError as e:
        click.echo(f"{PROG}: Error opening pstore directory {pstore_dir}: {e.strerror or e}", err=True)
        return EXIT_FAILURE
    with source:
        names = source.names()
        if not names:
            return EXIT_OK
        try:
            cache = SafeDir(cache_path, create=True)
        except OSError as e:
            click.echo(f"{PROG}: Failed to open directory {cache_path} : {e.strerror or e}", err=True)
            return EXIT_FAILURE
        with cache:
            status = EXIT_OK
            probe.watch_signals()
            for name in names:
                if probe.stopping:
                    return probe.stop_status()
                if not move(source, cache, name, probe):
                    status = EXIT_FAILURE
    return status


def move(source: SafeDir, cache: SafeDir, name: str, probe: Probe) -> bool:
    src = os.path.join(source.path, name)
    try:
        entry = source.read(name, ENTRY_MAX)
    except UnsafeEntry as e:
        probe.log.warning("%s; left in place", e)
        return True
    except OSError as e:
        probe.log.error("Failed to copy %s file in pstore: %s", src, e.strerror or e)
        return False
    if entry.truncated:
        probe.log.error("%s is larger than %d bytes; left in place", src, ENTRY_MAX)
        return False
    if cache.exists(name):
        try:
            same = cache.read(name, ENTRY_MAX).data == entry.data
        except (UnsafeEntry, OSError):
            same = False
        if not same:
            probe.log.warning("%s is still in the cache, not yet processed; %s is moved later", name, src)
            return True
    else:
        try:
            cache.create(name, entry.data, COPY_MODE)
        except OSError as e:
            probe.log.error("Failed to copy %s file in pstore: %s; left in place", src, e.strerror or e)
            return False
    try:
        source.unlink(name)
    except OSError as e:
        probe.log.error("Failed to remove file %s : %s", src, e.strerror or e)
        return False
    probe.log.info("moved %s to %s", src, cache.path)
    return True


main = run(command, PROG)

if __name__ == "__main__":
    main()
