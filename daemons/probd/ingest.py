"""telemprobd's event loop: connections in, verdicts and acknowledgements out.

One thread, one epoll set: the listening socket, every client still sending its frame
and the signal wake-up pipe.  A frame is read with a size cap (refused as soon as its
size field is read), a deadline per connection (`connection_timeout`, so slow or silent
peers are dropped) and a cap on connections (`max_connections`, beyond which a sender
is told "busy"; one uid gets `rate_limit_uid_share` percent of them at most, so it
cannot lock the other users out).  Each complete frame gets its verdict from
`admission`; a refusal is answered at once, an admitted record waits for the group
commit that ends the round (`staging`) and is acknowledged only once that commit is
durable.  A peer that already closed (a C libtelemetry never reads) costs nothing:
replies are sent with MSG_NOSIGNAL and errors ignored.
"""

from __future__ import annotations

import collections
import errno
import logging
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from telemetry import log as log_mod
from telemetry.ack import Ack, AckStatus
from telemetry.daemons.probd.admission import Admission, Context, Refuse, spool_limit_bytes
from telemetry.daemons.probd.listener import (
    CREDENTIALS_SPACE,
    Listener,
    pass_credentials,
    peer_credentials,
    stated_credentials,
)
from telemetry.daemons.probd.ratelimit import Policy, RateLimiter
from telemetry.daemons.probd.staging import (
    BUSY_GIVE_UP,
    FLUSH_INTERVAL,
    LIMITER_META_KEY,
    Dropped,
    Item,
    StageError,
    Stager,
    limiter_meta,
    new_record_id,
    reply,
)
from telemetry.daemons.runtime.signals import RELOAD_SIGNALS, Signals
from telemetry.daemons.runtime.throttle import LogThrottle
from telemetry.daemons.runtime.watchdog import Watchdog
from telemetry.daemons.store.queue import Sender
from telemetry.limits import FRAME_MAX
from telemetry.machineid import MachineId
from telemetry.optin import is_opted_in
from telemetry.paths import Paths
from telemetry.wire import FrameDecoder, FramingError, decode_frame, frame_size

log = logging.getLogger("telemprobd")

RECV_MAX = FRAME_MAX + 1
ACCEPT_BATCH = 64
TICK = 0.25
SHUTDOWN_GRACE = 2.0  # how long senders still mid-frame get after SIGTERM
STATUS_INTERVAL = 2.0
MEASURE_MIN_INTERVAL = 0.25  # re-reading the queue size when a record seems not to fit
MAX_POLL = 60.0
COALESCE_MAX = 0.0005  # longest wait for the stragglers of a batch
DRAIN_ROUNDS = 8  # non-blocking polls before a commit, at most
BUSY_RETRY = 0.05  # a locked queue is tried again this often, up to BUSY_GIVE_UP
DROPPED_JOURNAL_MAX = 10_000  # refusals waiting to be journaled, at most
_UNKNOWN = Sender(-1, -1, -1)
# Combined once: or-ing the flag enums costs about a microsecond on every call.
_PEEK = int(socket.MSG_DONTWAIT | socket.MSG_PEEK)


@dataclass(frozen=True)
class Settings:
    """What the loop takes from the config; rebuilt on SIGHUP."""

    max_connections: int
    connection_timeout: float
    spool_max_bytes: int
    policy: Policy
    recycling: bool
    idle_after: float
    spool_dir: str
    socket_path: str
    log_level: str
    metrics_textfile: str = ""
    spool_max_size_kib: int = -1

    @classmethod
    def from_config(cls, cfg) -> Settings:
        return cls(
            max_connections=cfg.max_connections,
            connection_timeout=float(cfg.connection_timeout),
            spool_max_bytes=spool_limit_bytes(cfg.spool_max_size),
            policy=Policy.from_config(cfg),
            recycling=cfg.daemon_recycling_enabled,
            idle_after=float(cfg.daemon_idle_time),
            spool_dir=cfg.spool_dir,
            socket_path=cfg.socket_path,
            log_level=cfg.log_level,
            metrics_textfile=cfg.metrics_textfile,
            spool_max_size_kib=cfg.spool_max_size,
        )


class Counters:
    """received, staged, deferred, rejected:<ack status>: totals since start (STATUS=)
    and the deltas not yet written to the queue's counters table."""

    def __init__(self) -> None:
        self.totals: collections.Counter[str] = collections.Counter()
        self.unflushed: collections.Counter[str] = collections.Counter()

    def add(self, name: str, n: int = 1) -> None:
        self.totals[name] += n
        self.unflushed[name] += n

    def take(self) -> dict[str, int]:
        taken, self.unflushed = self.unflushed, collections.Counter()
        return dict(taken)

    def give_back(self, taken: dict[str, int]) -> None:
        self.unflushed.update(taken)

    def status(self) -> str:
        t = self.totals
        parts = [f"{k}={t[k]}" for k in ("received", "staged", "deferred")]
        parts += [f"{k}={v}" for k, v in sorted(t.items()) if k.startswith("rejected:")]
        return " ".join(parts)


class Connection:
    __slots__ = ("sock", "fd", "sender", "stated", "deadline", "decoder", "registered")

    def __init__(self, sock: socket.socket, sender: Sender, deadline: float):
        self.sock = sock
        self.fd = sock.fileno()
        self.sender = sender  # SO_PEERCRED: who connected (the per-uid connection cap)
        self.stated: Sender | None = None  # SCM_CREDENTIALS of the first bytes, if any
        self.deadline = deadline
        self.decoder: FrameDecoder | None = None
        self.registered = False

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
        self.listener = listener
        self.settings = settings
        self.stager = stager
        self.counters = Counters()
        self.admission = Admission(limiter, settings.spool_max_bytes)  # owns the limiter
        self.machine_id = machine_id
        self.paths = paths
        self.idle_exit = idle_exit
        self.boot_id = boot_id
        self._reload_settings = reload
        self._notify = notify
        self._textfile: Any = None  # ctl.metrics.TextfileWriter, when metrics_textfile is set
        # Apart, so that a flood of bad frames cannot hide that the queue is failing.
        self._refusals_log = LogThrottle(logger=log)
        self._failures_log = LogThrottle(logger=log)
        self._conns: dict[int, Connection] = {}
        self._uid_conns: dict[int, int] = {}  # of _conns, by sender uid
        self._opted_in: bool | None = None  # as looked at since the last wake-up (_dispatch)
        self._pending: list[Item] = []
        self._pending_bytes = 0
        self._pending_since = 0.0
        self._last_batch = 1
        self._busy_since: float | None = None
        self._retry_at = 0.0
        self._dropped: list[Dropped] = []
        self._meta: dict[str, str] = {}
        self._limiter_dirty = False
        self._measured = 0  # queue bytes when last measured
        self._committed_since_measure = 0  # bytes this process committed since then
        self._measured_at = float("-inf")
        self._stopping = False
        self._stop_deadline = 0.0
        now = time.monotonic()
        self._last_activity = now
        self._next_tick = now + TICK
        self._next_flush = now + FLUSH_INTERVAL
        self._next_journal = now
        self._next_status = now
        self._last_status = ""
        self._watchdog = Watchdog.from_environment(now)
        self._accept_paused_until = 0.0
        self._ep = select.epoll()
        self._lfd = listener.sock.fileno()
        self._signals = Signals(reload=RELOAD_SIGNALS)

    # --- running ---------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or idle recycling); 0 when it ended as asked."""
        self._signals.install()
        self._ep.register(self._lfd, select.EPOLLIN)
        self._ep.register(self._signals.fileno(), select.EPOLLIN)
        if self.settings.spool_max_bytes >= 0:
            self._measure(time.monotonic())
        self._notify(f"READY=1\nSTATUS={self.counters.status()}")
        log.info("ready: %s", self._describe())
        try:
            while True:
                self._dispatch(self._ep.poll(self._poll_timeout()))
                now = time.monotonic()
                if self._pending and now >= self._retry_at and self._batch_complete(now):
                    self._commit(now)
                if now >= self._next_tick:
                    self._tick(now)
                if self._stopping and self._drained():
                    break
            self._flush(time.monotonic(), final=True)
        finally:
            self._ep.close()
            self._signals.close()
        return 0

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        # The opt-in marker is looked at once per wake-up (by the first frame judged after
        # it), not once per frame: a stat() per record was a measurable share of its cost.
        # An opt-out applies from the next wake-up on; only frames of the burst being read
        # at that instant can still be judged on the earlier look.
        self._opted_in = None
        for fd, _ in events:
            if fd == self._lfd:
                self._accept()
            elif fd == self._signals.fileno():
                self._on_signals()
            else:
                conn = self._conns.get(fd)
                if conn is not None:
                    self._read(conn)

    def _batch_complete(self, now: float) -> bool:
        """Whether to commit now: first take every frame that is already there, then give
        the senders of the last batch a moment (COALESCE_MAX at most) to send their next
        one, so that a batch holds every active sender instead of splitting in two."""
        for _ in range(DRAIN_ROUNDS):
            events = self._ep.poll(0)
            if not events:
                break
            self._dispatch(events)
        if self._stopping or len(self._pending) >= self._last_batch:
            return True
        return time.monotonic() - self._pending_since >= COALESCE_MAX

    def _describe(self) -> str:
        s = self.settings
        p = s.policy
        if p.active:
            parts = [f"{lim.amount} {what} per {lim.window / 60:g} min"
                     for lim, what in ((p.records, "records"), (p.bytes, "bytes")) if lim.enabled]
            limits = (", ".join(parts) + f", {p.uid_share}% per uid, strategy "
                      + ("spool" if p.spool else "drop"))
        else:
            limits = "off"
        quota = "none" if s.spool_max_bytes < 0 else f"{s.spool_max_bytes} bytes"
        return (f"socket {self.listener.path}, spool {self.stager.spool_dir}, rate limits {limits}, "
                f"spool quota {quota}, max {s.max_connections} connections, timeout {s.connection_timeout:g} s")

    def _poll_timeout(self) -> float:
        now = time.monotonic()
        if self._pending:
            due = max(self._retry_at, self._pending_since + COALESCE_MAX)
            return max(0.0, min(due, self._next_tick) - now)
        if self._conns or self._stopping:
            return max(0.0, self._next_tick - now)
        wake = now + MAX_POLL
        if self.counters.unflushed or self._limiter_dirty or self._dropped:
            wake = min(wake, self._next_flush)
        if self.counters.status() != self._last_status:
            wake = min(wake, self._next_status)
        if self.idle_exit and self.settings.recycling:
            wake = min(wake, self._last_activity + self.settings.idle_after)
        if self._accept_paused_until:
            wake = min(wake, self._accept_paused_until)
        wake = min(wake, self._watchdog.next_at)
        self._next_tick = min(self._next_tick, wake)
        return max(0.0, wake - now)

    def _drained(self) -> bool:
        return not (self._conns or self._pending)

    # --- signals and settings --------------------------------------------------------

    def _on_signals(self) -> None:
        self._signals.drain()
        if self._signals.take_reload():
            self._reload()
        if self._signals.stop_requested and not self._stopping:
            log.info("%s received: finishing records in flight, then exiting", self._signals.stop_name)
            self._begin_stop()

    def _reload(self) -> None:
        settings = self._reload_settings()
        if settings is not None:
            self.apply(settings)
            log.info("settings now: %s", self._describe())

    def apply(self, settings: Settings) -> None:
        old = self.settings
        self.settings = settings
        now = time.monotonic()
        if settings.policy != old.policy:
            self.admission.limiter = RateLimiter.restore(
                settings.policy, self.admission.limiter.snapshot(now), now, 0.0)
            self._limiter_dirty = True
        if settings.spool_max_bytes != old.spool_max_bytes:
            self.admission.spool_max_bytes = settings.spool_max_bytes
            self._measured_at = float("-inf")
        if settings.spool_dir != old.spool_dir:
            if self._pending:
                self._commit(now)  # what was admitted goes where it was admitted
            self.stager.switch_spool(settings.spool_dir)
            self._measured, self._committed_since_measure = 0, 0
            self._measured_at = float("-inf")
        if settings.socket_path != old.socket_path and not self.listener.activated:
            log.warning("socket_path changed to %s; restart telemprobd to listen there (still on %s)",
                        settings.socket_path, self.listener.path)
        if settings.log_level != old.log_level:
            logging.getLogger().setLevel(log_mod.LEVELS.get(settings.log_level, logging.INFO))

    def _begin_stop(self) -> None:
        self._stopping = True
        self._stop_deadline = time.monotonic() + SHUTDOWN_GRACE
        try:
            self._ep.unregister(self._lfd)
        except OSError:
            pass
        self.listener.close()

    # --- accepting and reading -------------------------------------------------------

    def _accept(self) -> None:
        now = time.monotonic()
        cap = self._uid_connection_cap()
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
                    self._warn(now, "cannot accept connections: %s; pausing for 0.1 s", e.strerror)
                    self._ep.modify(self._lfd, 0)
                    self._accept_paused_until = now + 0.1
                    self._next_tick = min(self._next_tick, self._accept_paused_until)
                elif e.errno not in (errno.ECONNABORTED, errno.EINTR):
                    self._warn(now, "accept failed: %s", e.strerror)
                return
            self._last_activity = now
            # Left in blocking mode: every call passes MSG_DONTWAIT, one syscall less.
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fd)
            try:
                sender = peer_credentials(sock)
                pass_credentials(sock)
            except OSError:
                sender = _UNKNOWN
            conn = Connection(sock, sender, now + self.settings.connection_timeout)
            if len(self._conns) + len(self._pending) >= self.settings.max_connections:
                self._busy(conn, f"telemprobd is serving {self.settings.max_connections} connections; try again")
                continue
            held = self._uid_conns.get(sender.uid, 0)
            if held >= cap:  # one user holding every slot would lock the others out
                self._busy(conn, f"uid {sender.uid} already has {cap} connections open; try again")
                continue
            self._conns[conn.fd] = conn
            self._uid_conns[sender.uid] = held + 1
            self._read(conn)
            if conn.fd in self._conns and not conn.registered:
                self._ep.register(conn.fd, select.EPOLLIN)
                conn.registered = True

    def _uid_connection_cap(self) -> int:
        """One uid's part of max_connections: the rate limits' per-uid share of it."""
        share = self.settings.policy.uid_share
        total = self.settings.max_connections
        return total if share >= 100 else max(1, total * share // 100)

    def _forget(self, conn: Connection) -> None:
        if self._conns.pop(conn.fd, None) is not None:
            uid = conn.sender.uid
            self._uid_conns[uid] -= 1
            if self._uid_conns[uid] <= 0:
                del self._uid_conns[uid]

    def _busy(self, conn: Connection, reason: str) -> None:
        try:  # take what already arrived, so closing does not reset the peer before it reads
            conn.sock.recv(RECV_MAX, socket.MSG_DONTWAIT)
        except OSError:
            pass
        self._refuse(conn, AckStatus.BUSY, reason)

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
            return
        except OSError as e:
            if conn.buffered:
                self._refuse(conn, AckStatus.INVALID, f"connection failed after {conn.buffered} bytes: {e.strerror}")
            else:
                self._close(conn)
            return
        try:
            if not data:
                if conn.decoder is None:
                    self._close(conn)  # connected and closed without sending: nothing to judge
                    return
                conn.decoder.eof()
                return
            if conn.decoder is None:
                size = frame_size(data) if len(data) >= 4 else None
                if size is not None and len(data) >= size:
                    self._judge(conn, decode_frame(data))
                    return
                conn.decoder = FrameDecoder()
            frame = conn.decoder.feed(data)
        except FramingError as e:
            self._refuse(conn, AckStatus.INVALID, str(e))
            return
        if not self._consume(conn, len(data) - (frame is not None)):
            return
        if frame is not None:
            self._judge(conn, frame)

    def _consume(self, conn: Connection, n: int) -> bool:
        """Take `n` peeked bytes out of the socket; False if the connection failed."""
        while n > 0:
            try:
                got = conn.sock.recv(n, socket.MSG_DONTWAIT)
            except OSError as e:
                self._refuse(conn, AckStatus.INVALID, f"connection failed after {conn.buffered} bytes: {e.strerror}")
                return False
            if not got:
                self._refuse(conn, AckStatus.INVALID, f"connection closed after {conn.buffered} bytes")
                return False
            n -= len(got)
        return True

    # --- verdicts --------------------------------------------------------------------

    def _judge(self, conn: Connection, frame) -> None:
        now = time.monotonic()
        wall = time.time()
        if self._opted_in is None:
            self._opted_in = is_opted_in(self.paths)
        ctx = Context(
            record_id=new_record_id(wall),
            sender=conn.stated or conn.sender,
            received_at=wall,
            now=now,
            opted_in=self._opted_in,
            machine_id=self.machine_id.current(),
            queued_bytes=self._queued(),
        )
        verdict = self.admission.judge(frame, ctx)
        if (isinstance(verdict, Refuse) and verdict.status is AckStatus.NO_SPACE
                and now - self._measured_at >= MEASURE_MIN_INTERVAL and self._measure(now)):
            verdict = self.admission.judge(frame, replace(ctx, queued_bytes=self._queued()))
        if isinstance(verdict, Refuse):
            if verdict.status is AckStatus.NO_SPACE and len(self._dropped) < DROPPED_JOURNAL_MAX:
                self._dropped.append(Dropped(ctx.record_id, verdict.record, verdict.reason, wall))
            self._refuse(conn, verdict.status, verdict.reason)
            return
        if self.settings.policy.active:
            self._limiter_dirty = True
        self.counters.add("received")
        self._unregister(conn)
        self._forget(conn)
        if not self._pending:
            self._pending_since = now
        self._pending.append(Item(verdict.record, conn.sock, verdict.booking, verdict.deferred))
        self._pending_bytes += verdict.record.size

    def _refuse(self, conn: Connection, status: AckStatus, reason: str) -> None:
        self.counters.add("received")
        self.counters.add(f"rejected:{status.value}")
        s = conn.sender
        self._warn(time.monotonic(), "refused a record from uid %d pid %d: %s: %s", s.uid, s.pid, status.value, reason)
        self._unregister(conn)
        self._forget(conn)
        reply(conn.sock, Ack(status, reason))

    def _warn(self, now: float, msg: str, *args) -> None:
        self._refusals_log.log(now, logging.WARNING, msg, *args)

    def _unregister(self, conn: Connection) -> None:
        if conn.registered:
            try:
                self._ep.unregister(conn.fd)
            except OSError:
                pass
            conn.registered = False

    def _close(self, conn: Connection) -> None:
        self._unregister(conn)
        self._forget(conn)
        conn.sock.close()

    # --- group commit ----------------------------------------------------------------

    def _commit(self, now: float) -> None:
        """Commit every admitted record of this round, then acknowledge each."""
        items = self._pending
        counters, meta = self._due_extras(now)
        try:
            self.stager.commit([i.record for i in items], counters, meta)
        except StageError as e:
            self.counters.give_back(counters)
            self._meta = {**meta, **self._meta}
            if e.retry:
                if self._busy_since is None:
                    self._busy_since = now
                if now - self._busy_since < BUSY_GIVE_UP and not self._stopping:
                    self._retry_at = now + BUSY_RETRY
                    return
            self._fail(now, items, e)
            return
        self._busy_since = None
        self._retry_at = 0.0
        self._committed_since_measure += self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        self._last_batch = len(items)
        deferred = 0
        for item in items:
            deferred += item.deferred
            reply(item.sock, Ack(AckStatus.DEFERRED if item.deferred else AckStatus.ACCEPTED,
                                 item.record.record_id))
        self.counters.add("staged", len(items))
        if deferred:
            self.counters.add("deferred", deferred)

    def _fail(self, now: float, items: list[Item], error: StageError) -> None:
        self._failures_log.log(now, logging.ERROR, "could not stage %d records: %s", len(items), error.detail)
        self._busy_since = None
        self._retry_at = 0.0
        self._pending, self._pending_bytes = [], 0
        for item in items:
            self.admission.limiter.release(item.booking)
            reply(item.sock, Ack(error.status, error.detail))
        self.counters.add(f"rejected:{error.status.value}", len(items))
        if self.settings.policy.active:
            self._limiter_dirty = True

    def _due_extras(self, now: float, force: bool = False) -> tuple[dict[str, int], dict[str, str]]:
        """Counters and limiter state to write with this commit: once a second at most."""
        if not force and now < self._next_flush:
            return {}, {}
        self._next_flush = now + FLUSH_INTERVAL
        if self._limiter_dirty:
            self._limiter_dirty = False
            snapshot = self.admission.limiter.snapshot(now)
            self._meta[LIMITER_META_KEY] = limiter_meta(snapshot, boot_id=self.boot_id, mono=now, wall=time.time())
        meta, self._meta = self._meta, {}
        return self.counters.take(), meta

    def _journal_dropped(self, now: float) -> None:
        self._next_journal = now + FLUSH_INTERVAL
        dropped, self._dropped = self._dropped, []
        self.stager.journal_dropped(dropped)

    def _flush(self, now: float, *, final: bool = False) -> None:
        """Counters and limiter state, when no records carried them."""
        if final and self._dropped:
            self._journal_dropped(now)
        if self._pending:
            return
        counters, meta = self._due_extras(now, force=final)
        if not (counters or meta):
            return
        try:
            self.stager.commit([], counters, meta)
        except StageError as e:
            self.counters.give_back(counters)
            self._meta = {**meta, **self._meta}
            log.log(logging.ERROR if final else logging.DEBUG, "cannot write counters: %s", e.detail)

    # --- spool quota -----------------------------------------------------------------

    def _queued(self) -> int:
        if self.admission.spool_max_bytes < 0:
            return 0
        return self._measured + self._committed_since_measure + self._pending_bytes

    def _measure(self, now: float) -> bool:
        """Re-read the queue size (telempostd removes rows); False if it cannot be read."""
        self._measured_at = now
        size = self.stager.measure()
        if size is None:
            return False
        self._measured, self._committed_since_measure = size, 0
        return True

    # --- housekeeping ----------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self._next_tick = now + TICK
        self._watchdog.ping_if_due(now, self._notify)
        for conn in [c for c in self._conns.values() if now >= c.deadline]:
            got = f" ({conn.buffered} bytes received)" if conn.buffered else " (nothing received)"
            self._refuse(conn, AckStatus.INVALID,
                         f"frame not complete within {self.settings.connection_timeout:g} s{got}")
        if self._accept_paused_until and now >= self._accept_paused_until and not self._stopping:
            self._accept_paused_until = 0.0
            self._ep.modify(self._lfd, select.EPOLLIN)
        if self._dropped and now >= self._next_journal:
            self._journal_dropped(now)
        if now >= self._next_flush:
            self._flush(now)
        if now >= self._next_status:
            status = self.counters.status()
            if status != self._last_status:
                self._notify(f"STATUS={status}")
                self._last_status = status
            self._next_status = now + STATUS_INTERVAL
            if self.settings.metrics_textfile:
                from telemetry.daemons.ctl.metrics import refresh_textfile

                s = self.settings
                self._textfile = refresh_textfile(self._textfile, s.metrics_textfile, self.paths, s.spool_dir,
                                                  s.spool_max_size_kib, now)
        if self._stopping:
            if now >= self._stop_deadline:
                for conn in list(self._conns.values()):
                    self._refuse(conn, AckStatus.BUSY, "telemprobd is shutting down; try again")
        elif (self.idle_exit and self.settings.recycling and self._drained()
              and now - self._last_activity >= self.settings.idle_after):
            log.info("Daemon exiting for recycling")
            self._begin_stop()
