"""The one thread that writes: group commit, counters, and answers rendered before commit.

Requests, on the event loop, hand validated records to `Writer.submit` and await the future
it returns.  The thread takes every record waiting at that moment and stores them in one
transaction, so concurrent POSTs share one fsync (SQLite WAL, synchronous=FULL) or one WAL
flush (PostgreSQL) instead of paying one each, and then wakes the loop once to answer the
whole batch.  The answer body is rendered inside the transaction: if rendering failed the
record would not be committed, so the collector never stores a record and answers 500 (the
reference backend's §11.1).  If a batch fails, its records are retried one by one so that
one bad record cannot fail the others; if the database went away, the next batch
reconnects.

Counters (stored, duplicates, rejections by rule, store errors) live in the database,
updated in the same transactions; rejections are counted in memory until the thread next
writes, runs a call, or has been idle for a second.  `counters` runs on this thread too,
after every write queued before it, so it sees each count exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .dburl import DatabaseURL
from .derive.hook import IngestHook
from .model import NewRecord, to_json
from .purge import PurgePolicy
from .store import Durability, Store, StoreError, open_store

log = logging.getLogger(__name__)

MAX_BATCH = 256
IDLE_FLUSH = 1.0  # seconds
STORED = "stored"
DUPLICATES = "duplicates"
ERRORS = "store_errors"
REJECTED_PREFIX = "rejected."


@dataclass(frozen=True)
class Reply:
    status: int  # 201 stored, 200 a repeat of a stored record id
    body: bytes

    @property
    def duplicate(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class Stats:
    records: int
    counters: dict[str, int]

    def document(self) -> dict[str, object]:
        c = self.counters
        rejected = {k[len(REJECTED_PREFIX):]: v for k, v in sorted(c.items()) if k.startswith(REJECTED_PREFIX)}
        return {
            "records": self.records,
            "stored": c.get(STORED, 0),
            "duplicates": c.get(DUPLICATES, 0),
            "rejected": sum(rejected.values()),
            "rejected_by_rule": rejected,
            "store_errors": c.get(ERRORS, 0),
        }


@dataclass
class _Insert:
    record: NewRecord
    future: asyncio.Future


@dataclass
class _Call:
    fn: Callable[[Store], object]
    future: asyncio.Future


# What the thread hands back to the loop: a future and its result, or the error it failed with.
_Outcome = tuple[asyncio.Future, object, BaseException | None]

_STOP = object()


def _settle(outcomes: list[_Outcome]) -> None:
    """On the loop: resolve a batch's futures (a request that is gone no longer waits)."""
    for future, result, error in outcomes:
        if future.cancelled():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


class Writer:
    def __init__(self, url: DatabaseURL, store: Store | None = None, durability: Durability = Durability.FULL,
                 on_batch: Callable[[int], None] | None = None, shard: int = 0, hook: IngestHook | None = None):
        self.url = url
        self.shard = shard  # this writer's counter rows (Store.add_counters), one per worker
        self.on_batch = on_batch  # told each transaction's record count, on the thread
        self.hook = hook  # what the views need of each batch, written in its transaction
        self.durability = durability
        self._store = store
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="collector-writer", daemon=True)

    def start(self) -> None:
        """Start the thread; `submit` and `call` are then used from the running loop only."""
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, flush counters, close the database."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
        if self._store is not None:
            self._store.close()
            self._store = None

    def submit(self, record: NewRecord) -> asyncio.Future:
        """A future of the `Reply`, or of the `StoreError` that kept the record out."""
        assert self._loop is not None, "the writer is not started"
        fut = self._loop.create_future()
        self._queue.put(_Insert(record, fut))
        return fut

    def call(self, fn: Callable[[Store], object]) -> asyncio.Future:
        """A future of `fn(store)` run on the thread, after the writes queued before it."""
        assert self._loop is not None, "the writer is not started"
        fut = self._loop.create_future()
        self._queue.put(_Call(fn, fut))
        return fut

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._pending[name] += n

    def counters(self) -> asyncio.Future:
        """A future of every counter: those in the database and those not yet written."""
        return self.call(self._counters)

    def purge(self, policy: PurgePolicy) -> asyncio.Future:
        return self.call(lambda store: store.purge(policy, int(time.time())))

    # --- the thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_FLUSH)
            except queue.Empty:
                self._flush_counters()
                continue
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            inserts = [i for i in batch if isinstance(i, _Insert)]
            if inserts:
                outcomes = self._commit(inserts)
            else:
                # No write to carry the counters: a steady stream of calls must not keep
                # them in memory.
                self._flush_counters()
                outcomes = []
            outcomes += [self._call(item) for item in batch if isinstance(item, _Call)]
            if outcomes:
                self._answer(outcomes)
            if any(item is _STOP for item in batch):
                self._flush_counters()
                return

    def _answer(self, outcomes: list[_Outcome]) -> None:
        """One wake-up of the loop for the whole batch."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(_settle, outcomes)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _take_pending(self) -> collections.Counter[str]:
        with self._lock:
            taken, self._pending = self._pending, collections.Counter()
        return taken

    def _give_back(self, deltas: collections.Counter[str]) -> None:
        with self._lock:
            self._pending.update(deltas)

    def _open(self) -> Store:
        if self._store is None:
            self._store = open_store(self.url, migrate=False, durability=self.durability)
        return self._store

    def _lost(self, error: BaseException) -> None:
        """After a failure, start the next batch on a fresh connection."""
        log.error("database error: %s", error)
        if self._store is not None:
            self._store.close()
            self._store = None

    def _commit(self, inserts: list[_Insert]) -> list[_Outcome]:
        if self.on_batch is not None:
            self.on_batch(len(inserts))
        deltas = self._take_pending()
        replies: list[Reply] = []
        try:
            store = self._open()
            with store.transaction():
                new = []
                for stored in store.insert_many([item.record for item in inserts]):
                    body = to_json(stored.record.as_json_dict())
                    replies.append(Reply(200 if stored.duplicate else 201, body))
                    deltas[DUPLICATES if stored.duplicate else STORED] += 1
                    if not stored.duplicate:
                        new.append(stored.record)
                derived = self.hook.after_insert(store, new) if self.hook is not None else None
                store.add_counters(deltas + derived if derived else deltas, self.shard)
        except Exception as e:  # noqa: BLE001 - every failure goes back to its request as a 500
            if self.hook is not None:
                self.hook.rolled_back()
            self._lost(e)
            # Nothing of the batch was committed: keep only the counters that came in with it.
            for name in (STORED, DUPLICATES):
                deltas.pop(name, None)
            if len(inserts) > 1:
                self._give_back(deltas)
                return [outcome for item in inserts for outcome in self._commit([item])]
            deltas[ERRORS] += 1
            self._give_back(deltas)
            return [(inserts[0].future, None, e if isinstance(e, StoreError) else StoreError(str(e)))]
        return [(item.future, reply, None) for item, reply in zip(inserts, replies, strict=True)]

    def _call(self, item: _Call) -> _Outcome:
        try:
            return item.future, item.fn(self._open()), None
        except Exception as e:  # noqa: BLE001 - the caller gets it
            self._lost(e)
            return item.future, None, e

    def _flush_counters(self) -> None:
        deltas = self._take_pending()
        if not +deltas:
            return
        try:
            store = self._open()
            with store.transaction():
                store.add_counters(deltas, self.shard)
        except Exception as e:  # noqa: BLE001
            self._lost(e)
            self._give_back(deltas)

    def _counters(self, store: Store) -> dict[str, int]:
        counters = collections.Counter(store.counters())
        with self._lock:
            counters.update(self._pending)
        return dict(counters)
