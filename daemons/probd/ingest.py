"""telemprobd's event loop: the I/O around `core.Ingest`, which makes every decision.

One thread, one epoll set: the listening socket, every client still sending its frame,
the signal wake-up pipe and the eventfd of the thread that syncs the queue to disk
(`syncer.Syncer`).  The loop accepts connections, reads each frame with a size
cap (refused as soon as its size field is read), hands it to the core, writes the
replies the core decides, commits the batches the core forms (`staging.Stager`) and
journals what it refused for lack of space.  A peer that already closed (a C
libtelemetry never reads) costs nothing: replies are sent with MSG_NOSIGNAL and errors
ignored.
"""

from __future__ import annotations

import errno
import logging
import math
import select
import socket
import time
from _socket import socket as _RawSocket
from collections.abc import Callable

from telemetry import log as log_mod
from telemetry.daemons.probd.core import MEASURE, Commit, Counters, Ingest, Reply, Settings
from telemetry.daemons.probd.listener import (
    CREDENTIALS_SPACE,
    Listener,
    peer_credentials,
    stated_credentials,
)
from telemetry.daemons.probd.ratelimit import RateLimiter
from telemetry.daemons.probd.staging import StageError, Stager, new_record_id, reply
from telemetry.daemons.probd.syncer import Syncer
from telemetry.daemons.runtime.signals import RELOAD_SIGNALS, Signals
from telemetry.daemons.runtime.watchdog import Watchdog
from telemetry.daemons.store.database import SyncPlan
from telemetry.daemons.store.queue import Sender
from telemetry.limits import FRAME_MAX, FRAME_SIZE_FIELD
from telemetry.machineid import MachineId
from telemetry.optin import is_opted_in
from telemetry.paths import Paths
from telemetry.wire import Frame, FrameDecoder, FramingError, decode_frame, frame_size

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see telemetry/__init__.py)
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("telemprobd")

RECV_MAX = FRAME_MAX + 1
ACCEPT_BATCH = 64
DRAIN_ROUNDS = 8  # non-blocking polls before a commit, at most
ACCEPT_PAUSE = 0.1  # out of descriptors: leave connections in the backlog this long
_UNKNOWN = Sender(-1, -1, -1)
# Combined once: or-ing the flag enums costs about a microsecond on every call.
_PEEK = int(socket.MSG_DONTWAIT | socket.MSG_PEEK)
# One shot: a connection reports once, then stays quiet (its frame's last byte is left
# unread until the reply) and leaves the epoll set when it is closed, with no call to
# take it out.  A frame still incomplete after a read re-arms it.
_CONN_EVENTS = int(select.EPOLLIN | select.EPOLLONESHOT)

__all__ = ["IngestLoop", "Settings"]


class Connection:
    __slots__ = ("sock", "fd", "sender", "stated", "decoder", "registered")

    def __init__(self, sock: _RawSocket, sender: Sender):
        self.sock = sock
        self.fd = sock.fileno()
        self.sender = sender  # SO_PEERCRED: who connected (the per-uid connection cap)
        self.stated: Sender | None = None  # SCM_CREDENTIALS of the first bytes, if any
        self.decoder: FrameDecoder | None = None
        self.registered = False  # in the epoll set (armed or not) until closed

    @property
    def buffered(self) -> int:
        return self.decoder.buffered if self.decoder else 0


class IngestLoop:
    def __init__(
        self,
        *,
        listener: Listener,
        settings: Settings,
        stager: Stager,
        limiter: RateLimiter,
        machine_id: MachineId,
        paths: Paths,
        idle_exit: bool,
        boot_id: str,
        reload: Callable[[], Settings | None],
        notify: Callable[[str], object] = lambda _msg: None,
    ):
        now = time.monotonic()
        self.core = Ingest(settings, limiter, boot_id=boot_id, now=now, idle_exit=idle_exit)
        self.listener = listener
        self.stager = stager
        self.machine_id = machine_id
        self.paths = paths
        self._reload_settings = reload
        self._notify = notify
        self._by_fd: dict[int, Connection] = {}
        self._textfile: Any = None  # ctl.metrics.TextfileWriter, when metrics_textfile is set
        self._opted_in: bool | None = None  # as looked at since the last wake-up (_dispatch)
        self._watchdog = Watchdog.from_environment(now)
        self._accept_paused_until = 0.0
        self._ep = select.epoll()
        self._lfd = listener.sock.fileno()
        self._signals = Signals(reload=RELOAD_SIGNALS)
        self._syncer = Syncer()

    @property
    def counters(self) -> Counters:
        return self.core.counters

    # --- running ---------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or idle recycling); 0 when it ended as asked."""
        core = self.core
        self._signals.install()
        self._ep.register(self._lfd, select.EPOLLIN)
        self._ep.register(self._signals.fileno(), select.EPOLLIN)
        self._ep.register(self._syncer.fileno(), select.EPOLLIN)
        if core.measure_due(time.monotonic()):
            self._measure(time.monotonic())
        self._notify(f"READY=1\nSTATUS={core.counters.status()}")
        log.info("ready: socket %s, %s", self.listener.path, core.describe())
        try:
            while True:
                self._dispatch(self._ep.poll(self._poll_timeout()))
                now = time.monotonic()
                if core.commit_possible(now):
                    self._drain_ready()
                    self._commit(core.commit_due(time.monotonic(), time.time()))
                self._start_sync(now)
                self._wake_postd(now)
                if core.tick_due(now) or now >= self._accept_paused_until > 0 or self._watchdog.due(now):
                    self._housekeeping(now)
                if core.stopping and core.drained() and not core.unsynced:
                    break
            self._finish(time.monotonic())
        finally:
            self._ep.close()
            self._signals.close()
            self._syncer.close()
        return 0

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        # The opt-in marker is looked at once per wake-up and once per batch of accepted
        # connections (by the first frame judged after it), not once per frame: a stat()
        # per record was a measurable share of its cost.  An opt-out applies from the next
        # wake-up on; only frames of connections already open can still be judged on the
        # earlier look.
        self._opted_in = None
        for fd, _ in events:
            if fd == self._lfd:
                self._accept()
            elif fd == self._signals.fileno():
                self._on_signals()
            elif fd == self._syncer.fileno():
                self._sync_finished()
            else:
                conn = self._by_fd.get(fd)
                if conn is not None:
                    self._read(conn)

    def _drain_ready(self) -> None:
        """Before a batch is formed, take every frame that is already there."""
        for _ in range(DRAIN_ROUNDS):
            events = self._ep.poll(0)
            if not events:
                break
            self._dispatch(events)

    def _poll_timeout(self) -> float:
        now = time.monotonic()
        wake = min(self.core.wake_at(now), self._watchdog.next_at)
        if self._accept_paused_until:
            wake = min(wake, self._accept_paused_until)
        return max(0.0, wake - now)

    # --- signals and settings --------------------------------------------------------

    def _on_signals(self) -> None:
        self._signals.drain()
        if self._signals.take_reload():
            self._reload()
        if self._signals.stop_requested and not self.core.stopping:
            log.info("%s received: finishing records in flight, then exiting", self._signals.stop_name)
            self._begin_stop()

    def _reload(self) -> None:
        settings = self._reload_settings()
        if settings is not None:
            self.apply(settings)
            log.info("settings now: socket %s, %s", self.listener.path, self.core.describe())

    def apply(self, settings: Settings) -> None:
        core = self.core
        old = core.settings
        now = time.monotonic()
        if settings.spool_dir != old.spool_dir:
            self._commit(core.commit_due(now, time.time(), force=True))  # admitted here, kept here
            self._wake_postd(now, at_once=True)  # where those records are
            self.stager.switch_spool(settings.spool_dir)
        core.apply(settings, now)
        if core.measure_due(now):
            self._measure(now)
        if settings.socket_path != old.socket_path and not self.listener.activated:
            log.warning("socket_path changed to %s; restart telemprobd to listen there (still on %s)",
                        settings.socket_path, self.listener.path)
        if settings.log_level != old.log_level:
            logging.getLogger().setLevel(log_mod.LEVELS.get(settings.log_level, logging.INFO))

    def _wake_postd(self, now: float, *, at_once: bool = False) -> None:
        if self.core.wake_postd_due(math.inf if at_once else now):
            self.core.woke_postd(now)
            self.stager.wake_postd()

    def _measure(self, now: float) -> None:
        """Read what is queued, in all and per uid (telempostd removes rows meanwhile)."""
        sizes = self.stager.measure_by_uid()
        self.core.measured(None if sizes is None else sum(sizes.values()), now, sizes)

    def _begin_stop(self) -> None:
        self.core.stop(time.monotonic())
        try:
            self._ep.unregister(self._lfd)
        except OSError:
            pass
        self.listener.close()

    # --- accepting and reading -------------------------------------------------------

    def _accept(self) -> None:
        accepted: list[Connection] = []
        try:
            self._accept_batch(accepted)
        finally:
            # Every connection of the batch is read after one new look at the opt-in marker,
            # so a frame sent after an opt-in (or opt-out) completed is judged by it, even
            # when this process was held up between two accepts of one batch.
            self._opted_in = None
            for conn in accepted:
                self._by_fd[conn.fd] = conn
                self._read(conn)
                if conn.fd in self._by_fd and not conn.registered:
                    self._ep.register(conn.fd, _CONN_EVENTS)
                    conn.registered = True

    def _accept_batch(self, accepted: list[Connection]) -> None:
        now = time.monotonic()
        for _ in range(ACCEPT_BATCH):
            try:
                # _accept() + a plain constructor: socket.accept() converts family and
                # type to enums on every call, a measurable share of a record's cost.
                fd, _ = self.listener.sock._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Leave them in the backlog for a moment rather than spin.
                    self.core.refusals_log.log(now, logging.WARNING, "cannot accept connections: %s; "
                                               "pausing for %g s", e.strerror, ACCEPT_PAUSE)
                    self._ep.modify(self._lfd, 0)
                    self._accept_paused_until = now + ACCEPT_PAUSE
                elif e.errno not in (errno.ECONNABORTED, errno.EINTR):
                    self.core.refusals_log.log(now, logging.WARNING, "accept failed: %s", e.strerror)
                return
            # Left in blocking mode: every call passes MSG_DONTWAIT, one syscall less.  The
            # C type, not socket.socket: its Python layer costs a microsecond or two per record.
            sock = _RawSocket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
            try:
                sender = peer_credentials(sock)  # SO_PASSCRED comes from the listener
            except OSError:
                sender = _UNKNOWN
            conn = Connection(sock, sender)
            refused = self.core.connected(conn, sender, now)
            if refused is not None:
                try:  # take what already arrived, so closing does not reset the peer before it reads
                    sock.recv(RECV_MAX, socket.MSG_DONTWAIT)
                except OSError:
                    pass
                self._send(refused)
                continue
            accepted.append(conn)

    def _read(self, conn: Connection) -> None:
        # Peeked, then consumed except for a complete frame's last byte: it stays in the
        # socket until the acknowledgement is written, so a crash before that resets the
        # sender's connection (data left unread) instead of closing it cleanly, which the
        # library would take for an original telemprobd's silent accept.
        try:
            if conn.decoder is None and conn.stated is None:
                data, ancdata, _flags, _addr = conn.sock.recvmsg(RECV_MAX, CREDENTIALS_SPACE, _PEEK)
                conn.stated = stated_credentials(ancdata)
            else:
                data = conn.sock.recv(RECV_MAX, _PEEK)
        except BlockingIOError:
            self._rearm(conn)
            return
        except OSError as e:
            if conn.buffered:
                self._fail(conn, f"connection failed after {conn.buffered} bytes: {e.strerror}")
            else:
                self._close(conn)
            return
        try:
            if not data:
                if conn.decoder is None:
                    self._close(conn)  # connected and closed without sending: nothing to judge
                    return
                conn.decoder.eof()  # raises when a frame was cut short
                self._close(conn)
                return
            if conn.decoder is None:
                size = frame_size(data) if len(data) >= FRAME_SIZE_FIELD else None
                if size is not None and len(data) >= size:
                    self._judge(conn, decode_frame(data))
                    return
                conn.decoder = FrameDecoder()
            frame = conn.decoder.feed(data)
        except FramingError as e:
            self._fail(conn, str(e))
            return
        if not self._consume(conn, len(data) - (frame is not None)):
            return
        if frame is not None:
            self._judge(conn, frame)
        else:
            self._rearm(conn)

    def _rearm(self, conn: Connection) -> None:
        if conn.registered:
            self._ep.modify(conn.fd, _CONN_EVENTS)

    def _consume(self, conn: Connection, n: int) -> bool:
        """Take `n` peeked bytes out of the socket; False if the connection failed."""
        while n > 0:
            try:
                got = conn.sock.recv(n, socket.MSG_DONTWAIT)
            except OSError as e:
                self._fail(conn, f"connection failed after {conn.buffered} bytes: {e.strerror}")
                return False
            if not got:
                self._fail(conn, f"connection closed after {conn.buffered} bytes")
                return False
            n -= len(got)
        return True

    def _judge(self, conn: Connection, frame: Frame) -> None:
        now = time.monotonic()
        wall = time.time()
        if self._opted_in is None:
            self._opted_in = is_opted_in(self.paths)
        record_id, machine_id = new_record_id(wall), self.machine_id.current()
        sender = conn.stated or conn.sender
        verdict = self.core.frame(conn, frame, sender=sender, record_id=record_id, wall=wall, now=now,
                                  opted_in=self._opted_in, machine_id=machine_id)
        if verdict is MEASURE:
            self._measure(now)
            verdict = self.core.frame(conn, frame, sender=sender, record_id=record_id, wall=wall, now=now,
                                      opted_in=self._opted_in, machine_id=machine_id)
        self._by_fd.pop(conn.fd, None)
        if isinstance(verdict, Reply):
            self._send(verdict)

    def _fail(self, conn: Connection, reason: str) -> None:
        self._by_fd.pop(conn.fd, None)
        self._send(self.core.failed(conn, conn.sender, reason, time.monotonic()))

    def _send(self, r: Reply) -> None:
        reply(r.conn.sock, r.ack)  # type: ignore[attr-defined]

    def _close(self, conn: Connection) -> None:
        self._by_fd.pop(conn.fd, None)
        self.core.closed(conn)
        conn.sock.close()

    # --- group commit ----------------------------------------------------------------

    def _commit(self, batch: Commit | None) -> None:
        """Commit the batch the core formed, then write the replies it decides."""
        if batch is None:
            return
        now = time.monotonic()
        try:
            self.stager.commit(batch.records, batch.counters, batch.meta)
        except StageError as e:
            replies = self.core.commit_failed(e, now)
        else:
            replies = self.core.committed(now)
            self._start_sync(now)  # before the replies: the disk works while they are sent
        for r in replies:
            self._send(r)

    # --- syncs to disk -----------------------------------------------------------------

    def _start_sync(self, now: float) -> None:
        if not self.core.sync_start_due(now):
            return
        plan = self.stager.sync_plan()
        self.core.sync_started(now)
        if plan is None:  # no queue open, so nothing was committed to it
            self._sync_ended(None, None)
        else:
            self._syncer.start(plan)

    def _sync_finished(self) -> None:
        done = self._syncer.finished()
        if done is not None:
            self._sync_ended(*done)

    def _sync_ended(self, plan: SyncPlan | None, error: OSError | None) -> None:
        """Release the replies the sync covered; a refusal is logged and tried again a
        sync_interval later (when stopping, not waited for)."""
        now = time.monotonic()
        replies = self.core.sync_done(now, self.stager.synced(plan, error))
        self._start_sync(now)  # batches committed meanwhile: their sync runs while these are sent
        for r in replies:
            self._send(r)

    def _flush(self, now: float, *, final: bool = False) -> None:
        """Counters and limiter state, when no records carried them."""
        batch = self.core.flush_due(now, time.time(), final=final)
        if batch is None:
            return
        try:
            self.stager.commit([], batch.counters, batch.meta)
        except StageError as e:
            self.core.flush_failed(e, final=final)

    def _journal_dropped(self, now: float, *, final: bool = False) -> None:
        dropped = self.core.dropped_due(now, final=final)
        if dropped:
            self.stager.journal_dropped(dropped)

    def _finish(self, now: float) -> None:
        self._journal_dropped(now, final=True)
        self._flush(now, final=True)

    # --- housekeeping ----------------------------------------------------------------

    def _housekeeping(self, now: float) -> None:
        self._watchdog.ping_if_due(now, self._notify)
        if self._accept_paused_until and now >= self._accept_paused_until and not self.core.stopping:
            self._accept_paused_until = 0.0
            self._ep.modify(self._lfd, select.EPOLLIN)
        if not self.core.tick_due(now):
            return
        chores = self.core.tick(now)
        for conn in chores.expired:
            r = self.core.timed_out(conn, conn.buffered, now)  # type: ignore[attr-defined]
            if r is not None:
                self._by_fd.pop(conn.fd, None)  # type: ignore[attr-defined]
                self._send(r)
        for r in chores.replies:
            self._by_fd.pop(r.conn.fd, None)  # type: ignore[attr-defined]
            self._send(r)
        self._journal_dropped(now)
        self._flush(now)
        if chores.status is not None:
            self._notify(f"STATUS={chores.status}")
        if chores.report and self.core.settings.metrics_textfile:
            from telemetry.daemons.ctl.metrics import refresh_textfile

            s = self.core.settings
            self._textfile = refresh_textfile(self._textfile, s.metrics_textfile, self.paths, s.spool_dir,
                                              s.spool_max_size_kib, now)
        if chores.stop:
            self._begin_stop()

