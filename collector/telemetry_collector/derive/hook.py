"""The ingest hook: the one call the write path makes per stored batch.

    hook = IngestHook(parsers)
    ...
    try:
        with store.transaction():
            stored = [store.insert(r) for r in batch]
            counters.update(hook.after_insert(store, [s.record for s in stored if not s.duplicate]))
    except Exception:
        hook.rolled_back()
        raise

It runs the payload parsers on the new records, then writes the counters, stacks and crash
rows in the same transaction, so a record and what the views know of it are committed
together (and a record stored twice is counted once: repeats are not passed in).  Its
writes sit in a savepoint: if they fail, they are undone, the failure is logged and
counted (``derive_errors``), and the records are stored all the same.  A parser that
raises loses only its own output for that record (``parser_errors.<name>``).

Each writer has its own hook.  It remembers the ids of the stacks it has seen and the
never-guilty lists, which it reads again when their version (shared by every worker)
changes; a batch that stores a new stack holds that version's row until it commits, so an
edit of a list and a new stack never miss each other.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Sequence

from telemetry.daemons.runtime.throttle import LogThrottle

from ..model import StoredRecord
from ..store import Store
from . import tables
from .counts import Deltas, Parsed, count
from .guilty import NeverGuilty, choose_guilty
from .parsers import FACTS_PER_RECORD, Fact, PayloadParser, fact_ok, load_entry_points, matches
from .stacks import MAX_FRAMES, Domain, Frame, Stack

log = logging.getLogger(__name__)

DERIVE_ERRORS = "derive_errors"
PARSER_ERRORS_PREFIX = "parser_errors."
STACK_CACHE = 50_000  # signatures remembered per writer


class IngestHook:
    def __init__(self, parsers: Sequence[PayloadParser] = (), *, parse: bool = True, shard: int = 0):
        self.parsers = tuple(parsers) if parse else ()
        self.shard = shard  # the writer's rows of the counters every batch touches (its worker)
        self._routes: dict[str, tuple[PayloadParser, ...]] = {}  # classification -> its parsers
        self._stack_ids: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._lists: dict[Domain, NeverGuilty] = {}
        self._lists_version: int | None = None
        self._log = LogThrottle(logger=log)

    @classmethod
    def installed(cls, *, parse: bool = True, shard: int = 0) -> IngestHook:
        """With every parser installed (entry points)."""
        return cls(load_entry_points() if parse else (), parse=parse, shard=shard)

    def after_insert(self, store: Store, records: Sequence[StoredRecord]) -> collections.Counter[str]:
        """Inside the caller's transaction; returns counter deltas for it to store."""
        counters: collections.Counter[str] = collections.Counter()
        if not records:
            return counters
        parsed = self._parse(records, counters)
        try:
            deltas = count(records, parsed)
            with store.savepoint():
                self._write(store, deltas)
        except Exception as e:  # noqa: BLE001 - the records are kept; only what the views know is lost
            self._stack_ids.clear()  # ids written in the undone savepoint are not stored
            self._log.log(time.monotonic(), logging.ERROR, "view counters of %d records not stored: %s",
                          len(records), e)
            counters[DERIVE_ERRORS] += 1
        return counters

    def rolled_back(self) -> None:
        """The transaction of the last call was not committed: forget the stacks it stored."""
        self._stack_ids.clear()

    def _parsers_for(self, classification: str) -> tuple[PayloadParser, ...]:
        found = self._routes.get(classification)
        if found is None:
            found = tuple(p for p in self.parsers if matches(p.classifications, classification))
            if len(self._routes) < 10_000:
                self._routes[classification] = found
        return found

    def _parse(self, records: Sequence[StoredRecord], counters: collections.Counter[str]) -> list[Parsed]:
        out = []
        for stored in records:
            for parser in self._parsers_for(stored.record.classification):
                try:
                    items: list[Fact | Stack] = []
                    facts = 0
                    for item in parser.parse(stored.record):
                        if isinstance(item, Stack):
                            checked_stack(item)
                            items.append(item)
                        elif isinstance(item, Fact) and facts < FACTS_PER_RECORD:
                            fact = fact_ok(item)
                            if fact is not None:
                                items.append(fact)
                                facts += 1
                except Exception as e:  # noqa: BLE001 - a parser's bug must not lose the record
                    counters[PARSER_ERRORS_PREFIX + parser.name] += 1
                    self._log.log(time.monotonic(), logging.ERROR, "payload parser %r failed on record %d: %s",
                                  parser.name, stored.id, e)
                    continue
                if items:
                    out.append(Parsed(stored, parser.name, items))
        return out

    def _write(self, store: Store, deltas: Deltas) -> None:
        tables.add_hours(store, deltas.hours, self.shard)
        tables.add_tallies(store, deltas.tallies, self.shard)
        tables.add_sightings(store, deltas.sightings)
        if deltas.crashes:
            tables.add_crashes(store, deltas.crashes, self._ids(store, deltas.stacks), self.shard)

    def _ids(self, store: Store, stacks: dict[str, Stack]) -> dict[str, int]:
        ids: dict[str, int] = {}
        new = []
        for signature, stack in stacks.items():
            known = self._stack_ids.get(signature)
            if known is None:
                new.append((signature, stack))
            else:
                self._stack_ids.move_to_end(signature)
                ids[signature] = known
        if new:
            version = tables.never_guilty_version(store, lock=True)
            if version != self._lists_version:
                self._lists = {d: tables.effective_never_guilty(store, d) for d in Domain}
                self._lists_version = version
            for signature, stack in new:
                guilty = choose_guilty(stack, self._lists[stack.domain])
                ids[signature] = tables.stack_id(store, signature, stack, guilty)
        for signature, stack_row_id in ids.items():
            self._stack_ids[signature] = stack_row_id
        while len(self._stack_ids) > STACK_CACHE:
            self._stack_ids.popitem(last=False)
        return ids

    def stacks_only(self, store: Store, records: Sequence[StoredRecord]) -> int:
        """Group records stored without their stacks (before the views existed, or before a
        parser was installed): stacks and crash rows only, since their counters were kept
        when they arrived.  Returns how many records got a stack."""
        parsed = [Parsed(p.record, p.source, [i for i in p.items if isinstance(i, Stack)])
                  for p in self._parse(records, collections.Counter())]
        deltas = count([], [p for p in parsed if p.items])
        if deltas.crashes:
            tables.add_crashes(store, deltas.crashes, self._ids(store, deltas.stacks), self.shard)
        return len(deltas.crashes)


REGROUP_BATCH = 500


def regroup_stored(store: Store, hook: IngestHook) -> int:
    """Run `IngestHook.stacks_only` over every stored record of a parser's classifications
    that has no stack yet, a batch per transaction; returns how many got one."""
    patterns = sorted({p for parser in hook.parsers for p in parser.classifications})
    if not patterns:
        return 0
    tests, values = [], []
    for p in patterns:
        if p.endswith("*"):
            tests.append("classification LIKE ? ESCAPE '\\'")
            values.append(p[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        else:
            tests.append("classification = ?")
            values.append(p)
    done = after = 0
    while True:
        ids = [int(r[0]) for r in store.rows(
            f"SELECT id FROM records r WHERE id > ? AND ({' OR '.join(tests)}) AND NOT EXISTS "
            "(SELECT 1 FROM crash_records c WHERE c.record_id = r.id) ORDER BY id LIMIT ?",
            (after, *values, REGROUP_BATCH), "finding records to group")]
        if not ids:
            return done
        after = ids[-1]
        try:
            with store.transaction():
                done += hook.stacks_only(store, sorted(store.records_by_id(ids), key=lambda r: r.id))
        except Exception:
            hook.rolled_back()
            raise


def checked_stack(stack: Stack) -> None:
    """A parser's stack is stored as it is: its parts must be what the tables hold."""
    if not isinstance(stack.domain, Domain) or not isinstance(stack.program, str) \
            or not isinstance(stack.headline, str) or not isinstance(stack.frames, tuple):
        raise TypeError("a Stack needs a Domain, a program and a headline (str) and a tuple of Frames")
    for f in stack.frames[:MAX_FRAMES + 1]:
        if not isinstance(f, Frame) or not isinstance(f.function, str | None) or not isinstance(f.module, str | None) \
                or not isinstance(f.offset, int | None):
            raise TypeError(f"not a usable Frame: {f!r:.100}")
    if len(stack.frames) > MAX_FRAMES:
        raise TypeError(f"a Stack holds at most {MAX_FRAMES} frames")
    stack.signature  # noqa: B018 - computed here, where a failure is the parser's

