"""The acknowledgement under a crash: a sender is never told "kept" for a record that
telemprobd did not commit.

Each case holds telemprobd at one point of a record's path, kills it there with SIGKILL
and looks at what the sender was told and what the queue holds: a write lock on the
queue (taken here, as another process would) holds the commit back after the frame was
read; SIGSTOP holds the accept back.  An original telemprobd closes without replying and
the library takes that silence for "accepted"; a crash of ours must not look like it.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import threading
import time

from support import wait_until
from telemprobd_harness import Probd, c_frame, good_headers, queued

from telemetry.client import Client, SendError
from telemetry.record import create_record

RECORD = create_record("org.example/e2e/ack", 2, "reported kept only if it is queued")
# telemprobd retries a locked queue for 1.5 s before it answers "busy"; by this time it has
# read the frame and is waiting for its commit (a slower machine only makes the kill land
# earlier, which must give the same answer).
COMMIT_WAIT = 0.4


class Outcome:
    def __init__(self) -> None:
        self.ack = None
        self.error: SendError | None = None
        self.done = threading.Event()


def send_in_background(client: Client) -> Outcome:
    out = Outcome()

    def run() -> None:
        try:
            out.ack = client.send(RECORD)
        except SendError as e:
            out.error = e
        finally:
            out.done.set()

    threading.Thread(target=run, daemon=True).start()
    return out


def lock_queue(spool_dir: str) -> sqlite3.Connection:
    db = sqlite3.connect(f"{spool_dir}/queue/queue.db", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    return db


def kill(probd: Probd) -> None:
    probd.proc.send_signal(signal.SIGKILL)
    probd.proc.wait()


def test_killed_after_reading_before_committing(user_install):
    with Probd(user_install, "rate_limit_enabled=false") as probd:
        client = Client(user_install.paths)
        client.send(RECORD)  # creates the queue
        db = lock_queue(probd.spool_dir)
        try:
            out = send_in_background(client)
            time.sleep(COMMIT_WAIT)
            kill(probd)
        finally:
            db.rollback()
            db.close()
        assert out.done.wait(10)
        rows = queued(probd.spool_dir)
    assert len(rows) == 1  # the first record only
    assert out.ack is None, f"told {out.ack!r} for a record that was never queued"
    assert "acknowledg" in str(out.error)


def test_killed_before_accepting(user_install):
    """The connection waits in telemprobd's own listen backlog when it dies."""
    with Probd(user_install, "rate_limit_enabled=false") as probd:
        client = Client(user_install.paths)
        probd.proc.send_signal(signal.SIGSTOP)
        out = send_in_background(client)
        time.sleep(COMMIT_WAIT)
        kill(probd)
        assert out.done.wait(10)
    assert out.ack is None, f"told {out.ack!r} for a record telemprobd never read"


def test_frame_in_pieces_killed_before_committing(user_install):
    """A frame that arrived in two pieces: the crash still resets the sender's connection,
    which is what tells the library that nothing was acknowledged."""
    frame = c_frame(good_headers(), b"two pieces")
    with Probd(user_install, "rate_limit_enabled=false") as probd:
        assert probd.send_raw(frame).startswith(b"TM/1 accepted")
        db = lock_queue(probd.spool_dir)
        try:
            s = probd.connect()
            s.sendall(frame[:50])
            time.sleep(0.1)
            s.sendall(frame[50:])
            s.shutdown(socket.SHUT_WR)
            time.sleep(COMMIT_WAIT)
            kill(probd)
        finally:
            db.rollback()
            db.close()
        try:
            reply = s.recv(512)
        except ConnectionResetError:
            reply = None
        s.close()
        assert len(queued(probd.spool_dir)) == 1
    assert reply is None, f"a clean close ({reply!r}) reads as an original telemprobd's accept"


def test_acknowledged_records_survive_and_others_are_not_reported_kept(user_install):
    """Many senders through the library, telemprobd killed in the middle of it."""
    results: list[tuple[str, object]] = []
    lock = threading.Lock()
    stop = threading.Event()
    with Probd(user_install, "rate_limit_enabled=false") as probd:
        client = Client(user_install.paths)

        def sender() -> None:
            while not stop.is_set():
                try:
                    ack = client.send(RECORD)
                except SendError as e:
                    with lock:
                        results.append(("error", e))
                    if "not listening" in str(e):
                        return
                    continue
                with lock:
                    results.append(("ack", ack))

        threads = [threading.Thread(target=sender) for _ in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(results) >= 300, timeout=60, what="300 sends")
        kill(probd)
        stop.set()
        for t in threads:
            t.join(30)
        rows = {r.record_id for r in queued(probd.spool_dir)}
    acks = [a for kind, a in results if kind == "ack"]
    assert all(not a.legacy for a in acks), "a crash was taken for an original telemprobd's silent accept"
    assert {a.record_id for a in acks} <= rows
