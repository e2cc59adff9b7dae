"""Printing the journal: what `telemctl journal` and `telem_journal` both run, and how
both read their filter options.

Lines and JSON come from `journal_view` (inert on a terminal).  A retained payload
(`-i`) is any local user's bytes: to a terminal it is printed with its control
characters made visible; to a pipe or a file it is written as it was sent, so a script
gets the exact bytes, as from the original.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from telemetry.daemons.ctl import journal_view
from telemetry.daemons.store import journal as journal_mod


@dataclass(frozen=True)
class JournalQuery:
    """The filters (ANDed) and how many of the newest matches to print (None: all kept)."""

    record_id: str | None = None
    event_id: str | None = None
    classification: str | None = None
    boot_id: str | None = None
    outcome: journal_mod.Outcome | None = None
    limit: int | None = journal_mod.READER_WINDOW


def print_journal(journal_dir: str, query: JournalQuery, *, include_record: bool = False,
                  verbose: bool = False, as_json: bool = False, out: TextIO | None = None) -> None:
    """Raises JournalError when the journal exists but cannot be read."""
    out = out or sys.stdout
    journal = journal_mod.open_for_reading(journal_dir)
    try:
        entries: list[journal_mod.JournalEntry] = []
        if journal is not None:
            entries = journal.query(record_id=query.record_id, event_id=query.event_id,
                                    classification=query.classification, boot_id=query.boot_id,
                                    outcome=query.outcome, limit=query.limit)

        def payload(entry: journal_mod.JournalEntry) -> bytes | None:
            return journal.retained_payload(entry.record_id) if journal and include_record else None

        if as_json:
            objs = [journal_view.entry_json(e, payload(e), include_payload=include_record) for e in entries]
            out.write(journal_view.json_text(objs) + "\n")
            return
        terminal = out.isatty()
        if verbose:
            out.write(journal_view.format_header() + "\n")
        for entry in entries:
            out.write(journal_view.format_line(entry) + "\n")
            data = payload(entry)
            if data:
                _write_payload(out, data, terminal)
        if verbose:
            out.write(journal_view.format_total(len(entries)) + "\n")
        out.flush()
    finally:
        if journal is not None:
            journal.close()


def _write_payload(out: TextIO, data: bytes, terminal: bool) -> None:
    if terminal:
        text = journal_view.visible(data)
        out.write(text if text.endswith("\n") else text + "\n")
        return
    out.flush()
    raw: BinaryIO = out.buffer  # type: ignore[attr-defined]
    raw.write(data if data.endswith(b"\n") else data + b"\n")
    raw.flush()


def filter_callback(check: Callable[[str], str]) -> Callable:
    """A click option callback that checks a filter value with `check`: a value that can
    never match (journal_view.FilterError) is a usage error naming the option."""
    import click

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check(value)
        except journal_view.FilterError as e:
            raise click.BadParameter(str(e), ctx, param) from None

    return callback
