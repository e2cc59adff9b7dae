"""inotify: the event parser (pure) and the watch on a real directory."""

from __future__ import annotations

import os
import select
import struct

from hypothesis import given
from hypothesis import strategies as st

from telemetry.daemons.postd.inotify import (
    IN_CLOSE_WRITE,
    IN_MOVED_TO,
    Event,
    FileWatch,
    parse_events,
)
from telemetry.daemons.store.queue import Queue, queue_dir

names = st.text(st.characters(blacklist_characters="\0/", blacklist_categories=("Cs",)), min_size=0, max_size=40)


def pack(ev: Event, pad: int) -> bytes:
    raw = os.fsencode(ev.name)
    length = len(raw) + pad if raw or pad else 0
    return struct.pack("=iIII", ev.wd, ev.mask, ev.cookie, length) + raw + b"\0" * (length - len(raw))


events = st.builds(Event, st.integers(1, 2**31 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), names)


@given(st.lists(st.tuples(events, st.integers(1, 16)), max_size=10))
def test_parse_round_trip(items):
    data = b"".join(pack(ev, pad) for ev, pad in items)
    assert parse_events(data) == [ev for ev, _ in items]


@given(st.lists(st.tuples(events, st.integers(1, 16)), min_size=1, max_size=5), st.data())
def test_truncated_tail_is_ignored(items, data):
    blob = b"".join(pack(ev, pad) for ev, pad in items)
    cut = data.draw(st.integers(0, len(blob)))
    parsed = parse_events(blob[:cut])
    assert parsed == [ev for ev, _ in items][: len(parsed)]


def readable(fd: int, timeout: float = 5.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_watch_sees_the_queue_wakeup_and_ignores_other_files(tmp_path):
    spool = str(tmp_path)
    Queue(spool).close()
    watch = FileWatch(queue_dir(spool), "queue.changed")
    try:
        with open(tmp_path / "other", "w") as f:
            f.write("x")
        q = Queue(spool)  # writes queue.db and its WAL: not the wake-up file
        q.close()
        if readable(watch.fileno(), 0.2):
            assert watch.read() is False
        Queue(spool).touch_wakeup()
        assert readable(watch.fileno())
        assert watch.read() is True
        assert watch.read() is False  # drained
        os.rename(tmp_path / "other", tmp_path / "queue" / "queue.changed")  # renamed into place also counts
        assert readable(watch.fileno())
        assert watch.read() is True
    finally:
        watch.close()


def test_mask_constants():
    assert FileWatch.MASK & IN_CLOSE_WRITE and FileWatch.MASK & IN_MOVED_TO
