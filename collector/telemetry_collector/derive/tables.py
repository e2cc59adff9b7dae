"""The derived tables (schema migration 3): written by the ingest hook, the never-guilty
editor and regrouping, inside the caller's transaction.

Every write is one multi-row statement per table and batch (chunked), so PostgreSQL pays
one round trip for each, not one per record.  Counters are upserts that add, so several
workers can count into the same rows; the rows come sorted (`counts`), so they are locked
in one order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..dburl import Backend
from ..store import Store
from .counts import DAY, CrashRow, HourSpan, Tally, gap_after
from .guilty import NeverGuilty, choose_guilty, default_list
from .stacks import Domain, Guilty, Stack, frames_from_text, frames_text

CHUNK = 200  # rows per statement: well inside SQLite's and PostgreSQL's parameter limits
NEVER_GUILTY_SETTING = "never_guilty"


def _chunks(rows: Sequence[tuple], size: int = CHUNK) -> Iterable[Sequence[tuple]]:
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def _values(rows: int, columns: int) -> str:
    one = "(" + ", ".join("?" * columns) + ")"
    return ", ".join([one] * rows)


def _flat(rows: Sequence[tuple]) -> list[object]:
    return [v for row in rows for v in row]


def add_hours(store: Store, hours: dict[int, HourSpan], shard: int = 0) -> None:
    rows = [(h, shard, s.first_id, s.last_id, s.records) for h, s in hours.items()]
    for chunk in _chunks(rows):
        store.run(
            f"INSERT INTO reception_hours (hour, shard, first_id, last_id, records) VALUES {_values(len(chunk), 5)} "
            f"ON CONFLICT (hour, shard) DO UPDATE SET first_id = {store.least}(reception_hours.first_id, excluded.first_id), "
            f"last_id = {store.greatest}(reception_hours.last_id, excluded.last_id), "
            "records = reception_hours.records + excluded.records",
            _flat(chunk), "counting records per hour")


def add_tallies(store: Store, tallies: dict[tuple[str, str, int, str], Tally], shard: int = 0) -> None:
    rows = [(*key, shard, t.records, t.first_id) for key, t in tallies.items()]
    for chunk in _chunks(rows):
        store.run(
            f"INSERT INTO tallies (source, name, day, value, shard, records, first_id) VALUES {_values(len(chunk), 7)} "
            "ON CONFLICT (source, name, day, value, shard) DO UPDATE SET records = tallies.records + excluded.records, "
            f"first_id = {store.least}(tallies.first_id, excluded.first_id)",
            _flat(chunk), "counting records per day")


def add_sightings(store: Store, rounds: list[dict[tuple[str, str], int]]) -> None:
    """Extend each (build, machine id)'s span of days; a sighting after days without one
    records those days as a gap."""
    for sightings in rounds:
        rows = [(build, machine, day, day) for (build, machine), day in sightings.items()]
        gaps = []
        for chunk in _chunks(rows):
            returned = store.rows(
                f"INSERT INTO machine_spans (build, machine_id, first_day, last_day) VALUES {_values(len(chunk), 4)} "
                "ON CONFLICT (build, machine_id) DO UPDATE SET prev_last_day = machine_spans.last_day, "
                f"first_day = {store.least}(machine_spans.first_day, excluded.first_day), "
                f"last_day = {store.greatest}(machine_spans.last_day, excluded.last_day) "
                "WHERE excluded.last_day > machine_spans.last_day OR excluded.first_day < machine_spans.first_day "
                "RETURNING build, machine_id, prev_last_day",
                _flat(chunk), "counting machines per build")
            for build, machine, previous in returned:
                gap = gap_after(previous, sightings[(build, machine)])
                if gap is not None:
                    gaps.append((build, machine, *gap))
        for chunk in _chunks(sorted(gaps)):
            store.run(f"INSERT INTO machine_gaps (build, machine_id, first_day, last_day) "
                      f"VALUES {_values(len(chunk), 4)} ON CONFLICT DO NOTHING",
                      _flat(chunk), "counting machines per build")


def stack_id(store: Store, signature: str, stack: Stack, guilty: Guilty) -> int:
    """The stored stack's id, storing it with its guilty frame if it is new."""
    row = store.rows(
        "INSERT INTO crash_stacks (domain, signature, program, headline, frames, guilty_function, guilty_module) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (signature) DO NOTHING RETURNING id",
        (stack.domain.value, signature, stack.program, stack.headline, frames_text(stack.frames),
         guilty.function, guilty.module), "storing a crash stack")
    if not row:
        row = store.rows("SELECT id FROM crash_stacks WHERE signature = ?", (signature,), "reading a crash stack")
    return int(row[0][0])


_CRASH_DAYS_UPDATE = (
    "ON CONFLICT (domain, day, stack_id, shard) DO UPDATE SET records = crash_days.records + excluded.records, "
    "first_seen = {least}(crash_days.first_seen, excluded.first_seen), "
    "last_seen = {greatest}(crash_days.last_seen, excluded.last_seen), "
    "last_record_id = {greatest}(crash_days.last_record_id, excluded.last_record_id)"
)


def add_crashes(store: Store, crashes: Sequence[CrashRow], ids: dict[str, int], shard: int = 0) -> None:
    """The crash rows, and the counts per stack and day the groups are summed from."""
    rows = [(c.record_id, c.domain.value, ids[c.signature], c.ts_reception, c.machine_id, c.build) for c in crashes]
    update = _CRASH_DAYS_UPDATE.format(least=store.least, greatest=store.greatest)
    if store.backend is Backend.POSTGRESQL:
        # One statement, one round trip: the day counts from the rows the insert returns.
        for chunk in _chunks(rows):
            store.run(
                "WITH new AS (INSERT INTO crash_records (record_id, domain, stack_id, ts_reception, machine_id, build) "
                f"VALUES {_values(len(chunk), 6)} ON CONFLICT (record_id) DO NOTHING "
                "RETURNING record_id, domain, stack_id, ts_reception) "
                "INSERT INTO crash_days (domain, day, stack_id, shard, records, first_seen, last_seen, last_record_id) "
                "SELECT domain, ts_reception / 86400, stack_id, CAST(? AS INTEGER), count(*), min(ts_reception), "
                "max(ts_reception), max(record_id) FROM new GROUP BY domain, ts_reception / 86400, stack_id "
                f"ORDER BY 1, 2, 3 {update}",
                [*_flat(chunk), shard], "storing crash records")
        return
    new: set[int] = set()  # a record grouped before (regroup beside the writer) is not counted twice
    for chunk in _chunks(rows):
        new.update(int(r[0]) for r in store.rows(
            f"INSERT INTO crash_records (record_id, domain, stack_id, ts_reception, machine_id, build) "
            f"VALUES {_values(len(chunk), 6)} ON CONFLICT (record_id) DO NOTHING RETURNING record_id",
            _flat(chunk), "storing crash records"))
    days: dict[tuple[str, int, int], list[int]] = {}
    for record_id, domain, stack, ts, _, _ in rows:
        if record_id not in new:
            continue
        d = days.get((domain, ts // DAY, stack))
        if d is None:
            days[(domain, ts // DAY, stack)] = [1, ts, ts, record_id]
        else:
            d[0] += 1
            d[1], d[2], d[3] = min(d[1], ts), max(d[2], ts), max(d[3], record_id)
    day_rows = [(*key, shard, *v) for key, v in sorted(days.items())]
    for chunk in _chunks(day_rows):
        store.run(f"INSERT INTO crash_days (domain, day, stack_id, shard, records, first_seen, last_seen, "
                  f"last_record_id) VALUES {_values(len(chunk), 8)} {update}", _flat(chunk), "counting crash records")


# --- the never-guilty lists ---------------------------------------------------------------

def never_guilty_version(store: Store, *, lock: bool = False) -> int:
    """How many times the lists changed.  With `lock`, a writer holds the row until it
    commits, so an edit waits for the stacks it is storing and they see the edit's list."""
    row = store.rows(f"SELECT value FROM view_settings WHERE name = ?{store.share_lock if lock else ''}",
                     (NEVER_GUILTY_SETTING,), "reading the never-guilty lists")
    return int(row[0][0]) if row else 0


def never_guilty(store: Store, domain: Domain) -> NeverGuilty | None:
    """The stored list; None until one was ever saved (the shipped default applies)."""
    rows = store.rows("SELECT entry FROM never_guilty WHERE domain = ? ORDER BY entry", (domain.value,),
                      "reading the never-guilty list")
    if not rows:
        saved = store.rows("SELECT 1 FROM view_settings WHERE name = ?", (_saved(domain),))
        if not saved:
            return None
    return NeverGuilty.from_texts(r[0] for r in rows)


def effective_never_guilty(store: Store, domain: Domain) -> NeverGuilty:
    stored = never_guilty(store, domain)
    return default_list(domain) if stored is None else stored


def _saved(domain: Domain) -> str:
    return f"never_guilty_saved.{domain.value}"


def replace_never_guilty(store: Store, domain: Domain, new: NeverGuilty | None) -> int:
    """Store the domain's list (None: back to the shipped default) and regroup its stacks
    at once; returns how many stacks changed group.  One transaction."""
    with store.transaction():
        store.run("UPDATE view_settings SET value = value + 1 WHERE name = ?", (NEVER_GUILTY_SETTING,),
                  "changing the never-guilty list")
        store.run("DELETE FROM never_guilty WHERE domain = ?", (domain.value,), "changing the never-guilty list")
        store.run("DELETE FROM view_settings WHERE name = ?", (_saved(domain),), "changing the never-guilty list")
        if new is not None:
            rows = [(domain.value, t) for t in new.texts()]
            for chunk in _chunks(rows):
                store.run(f"INSERT INTO never_guilty (domain, entry) VALUES {_values(len(chunk), 2)}", _flat(chunk),
                          "changing the never-guilty list")
            store.run("INSERT INTO view_settings (name, value) VALUES (?, 1)", (_saved(domain),),
                      "changing the never-guilty list")
        return regroup(store, domain, new if new is not None else default_list(domain))


def regroup(store: Store, domain: Domain, never: NeverGuilty) -> int:
    rows = store.rows("SELECT id, program, headline, frames, guilty_function, guilty_module FROM crash_stacks "
                      "WHERE domain = ?", (domain.value,), "reading crash stacks")
    changes = []
    for stack_row_id, program, headline, frames, function, module in rows:
        guilty = choose_guilty(Stack(domain, program, frames_from_text(frames), headline), never)
        if (guilty.function, guilty.module) != (function, module):
            changes.append((guilty.function, guilty.module, stack_row_id))
    store.run_many("UPDATE crash_stacks SET guilty_function = ?, guilty_module = ? WHERE id = ?", changes,
                   "regrouping crash stacks")
    return len(changes)
