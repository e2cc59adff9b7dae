"""telem_journal: the original's journal reader, kept for the scripts that call it.

A thin alias of `telemctl journal` (the same query and output, see `journal_print`) with
the original's options and usage text: -r, -e, -c, -b, -i, -V, -h.  Like the original it
looks at the last 100 entries, prints nothing and exits 0 when nothing matches, and
exits 1 on a bad option.  Unlike it, a filter value that can never match (an id that is
not 32 hex characters …) is an error naming the option, and a record that was not
delivered shows its outcome at the end of its line.
"""

from __future__ import annotations

import click

from telemetry.cli import chosen_mode, mode_options
from telemetry.command import Command
from telemetry.daemons.ctl import journal_print, journal_view
from telemetry.paths import Paths

PROG = "telem_journal"

USAGE = """\
Usage:
  %s [-Vi] [-r <record_id>] [-e <event_id>] [-c <classification>] [-b <boot_id>]

Where:
  -r,  --record_id        Print record with specific record_id
  -e,  --event_id         Print records with specific event_id
  -c,  --classification   Print records with specific classification
  -b,  --boot_id          Print records with specific boot_id
  -i,  --include_record   Include record content if available.
                          Content only available when telemetry is configured
                          with "record_retention_enabled=true"
  -V,  --verbose          Verbose output
  -h,  --help             Display this help message
"""


class JournalCommand(Command):
    def get_help(self, ctx: click.Context) -> str:
        return (USAGE % (ctx.find_root().info_name or PROG)).rstrip("\n")


# The man page's sections; --help prints the original's USAGE.
EPILOG = """\b
Exit status:
  0  the matching entries were printed (none, when nothing matches)
  1  a bad option or filter value, or a journal that cannot be read

\b
Files:
  /var/log/telemetry/journal.db   the journal (user mode: in $XDG_STATE_HOME/telemetrics)

\b
Examples:
  telem_journal -c org.clearlinux/hello/world   the hello records handled lately
  telem_journal -V -i                           with a header, the total and kept payloads
  telemctl journal --json                       the same journal as JSON (telemctl(1))
"""


@click.command(PROG, cls=JournalCommand, context_settings={"help_option_names": ["-h", "--help"]},
               short_help="Print the telemetry journal, as the original telem_journal",
               help="Print the telemetry journal: what became of each record the daemons handled, "
               "the last 100 entries, as 'telemctl journal' prints them, with the original "
               "telem_journal's options.", epilog=EPILOG)
@click.option("-r", "--record_id", metavar="ID", callback=journal_print.filter_callback(journal_view.record_id_filter))
@click.option("-e", "--event_id", metavar="ID", callback=journal_print.filter_callback(journal_view.event_id_filter))
@click.option("-c", "--classification", metavar="CLASS", callback=journal_print.filter_callback(journal_view.classification_filter))
@click.option("-b", "--boot_id", metavar="UUID", callback=journal_print.filter_callback(journal_view.boot_id_filter))
@click.option("-i", "--include_record", is_flag=True)
@click.option("-V", "--verbose", is_flag=True)
@mode_options
def main(record_id: str | None, event_id: str | None, classification: str | None, boot_id: str | None,
         include_record: bool, verbose: bool) -> int:
    paths = Paths.detect(chosen_mode())
    query = journal_print.JournalQuery(record_id=record_id, event_id=event_id,
                                       classification=classification, boot_id=boot_id)
    journal_print.print_journal(paths.journal_dir, query, include_record=include_record, verbose=verbose)
    return 0


if __name__ == "__main__":
    main(prog_name=PROG)
