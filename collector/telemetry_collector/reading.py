"""GET /api/records as a stream whose memory does not grow with the answer (pure parts).

The reference built the whole JSON answer in memory: 1,000 records of 1 MiB made a
gigabyte, held for as long as the client took to read it.  Here the answer is read in two
steps: first the ids and payload sizes the query selects (small), then the records in
groups of at most `GROUP_BYTES` of payload (or one record, if larger), each group fetched,
rendered and sent before the next is read.  A send waits while the client is not reading
(the server's flow control), so a slow reader holds one group and what the socket buffers,
never the page, and no database connection while it waits.

The answer is ``{"next_before_id": N, "records": [...]}``: the records as the reference
shows them, highest id first, and the cursor of the next page (the lowest id of this one)
when this page is full, else null.  Keys stay sorted, as in every other answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from .model import StoredRecord, to_json

GROUP_BYTES = 256 * 1024
GROUP_RECORDS = 64  # at most, however small: one query stays short


def plan_groups(index: Sequence[tuple[int, int]], budget: int = GROUP_BYTES,
                most: int = GROUP_RECORDS) -> list[list[int]]:
    """`index` is (id, size) in answer order; consecutive ids grouped so that a group's sizes
    add up to at most `budget` unless it holds one record, and it holds at most `most`."""
    groups: list[list[int]] = []
    current: list[int] = []
    size = 0
    for record_id, n in index:
        if current and (size + n > budget or len(current) >= most):
            groups.append(current)
            current, size = [], 0
        current.append(record_id)
        size += n
    if current:
        groups.append(current)
    return groups


def next_cursor(index: Sequence[tuple[int, int]], limit: int) -> int | None:
    return index[-1][0] if index and len(index) >= limit else None


def opening(cursor: int | None) -> bytes:
    return b'{"next_before_id":' + (b"null" if cursor is None else str(cursor).encode()) + b',"records":['


CLOSING = b"]}"


def render_group(records: Sequence[StoredRecord], first: bool) -> Iterator[bytes]:
    """Each record's JSON, with the separating comma, in order."""
    for r in records:
        yield (b"" if first else b",") + to_json(r.as_json_dict())
        first = False
