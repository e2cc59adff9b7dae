"""NATS JetStream through nats-py: a persistent (and, in a cluster, replicated) stream.

Subjects are ``<namespace>.<domain>``; the stream (created if missing, unless
``create_stream = false``) takes ``<namespace>.>``.  A record is confirmed by JetStream's
publish acknowledgement, which the server sends once the message is in the stream's
store (in a cluster, on a quorum of replicas).  Each message carries ``Nats-Msg-Id`` = the
record id, so a record sent again within the stream's duplicate window (a retry after a
503 whose first try did reach the stream) is stored once and acknowledged as a duplicate.

Publishing is asynchronous (nats-py's ``publish_async``): a batch is written to the
connection in one go and the acknowledgements come back as they come; one timer per batch
fails what is still unconfirmed after ``ack_timeout``.  While the connection is down every
record fails at once (no buffering that could outlive the answer); nats-py reconnects by
itself, and the first connection is retried in the background until it succeeds, so the
collector serves even while the stream is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .base import (
    Delivery,
    Dispatcher,
    DispatchFailed,
    Observer,
    Pending,
    expire_after,
    fail_all,
    settle,
)
from .config import Kind, NatsSettings
from .message import MSG_ID_HEADER, SCHEMA_HEADER, SCHEMA_VERSION

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 20_000  # unconfirmed publishes per worker before publishing waits
_SCHEMA = str(SCHEMA_VERSION)


class NatsDispatcher(Dispatcher):
    kind = Kind.NATS

    def __init__(self, settings: NatsSettings, namespace: str, ack_timeout: float, observer: Observer):
        super().__init__(observer)
        self.settings = settings
        self.namespace = namespace
        self.ack_timeout = ack_timeout
        self._nc: Any = None  # nats.aio.client.Client, imported on start
        self._js: Any = None
        self._ready = False  # connected and the stream is known to exist
        self._connector: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        await super().start()
        try:
            import nats  # noqa: F401
        except ImportError:
            raise DispatchFailed("the nats dispatcher needs nats-py: "
                                 "pip install 'telemetry-collector[nats]'") from None
        self.observer.connected(self.kind, False)
        self._connector = asyncio.get_running_loop().create_task(self._connect_until_done())
        # Serve at once if the server is away, but do not answer 503 for a start-up moment.
        await asyncio.wait({self._connector}, timeout=self.settings.connect_timeout)

    async def _connect_until_done(self) -> None:
        import nats

        s = self.settings
        while self._nc is None:
            try:
                self._nc = await nats.connect(
                    servers=list(s.servers), connect_timeout=s.connect_timeout, allow_reconnect=True,
                    max_reconnect_attempts=-1, reconnect_time_wait=s.reconnect_wait,
                    user_credentials=s.credentials, name="telemetry-collector",
                    error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected, pending_size=8 << 20,
                )
            except Exception as e:  # noqa: BLE001 - unreachable, refused, bad credentials: try again
                log.warning("nats: cannot connect to %s: %s; retrying", ", ".join(s.servers), _why(e))
                await asyncio.sleep(max(s.reconnect_wait, 0.5))
        self._js = self._nc.jetstream(timeout=self.ack_timeout, publish_async_max_pending=MAX_IN_FLIGHT)
        while not await self._ensure_stream():
            await asyncio.sleep(max(s.reconnect_wait, 1.0))
        self._set_ready(True)
        log.info("nats: connected to %s, stream %s", self._nc.connected_url.netloc if self._nc.connected_url
                 else "?", s.stream)

    async def _ensure_stream(self) -> bool:
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        s = self.settings
        assert self._js is not None
        try:
            try:
                await self._js.stream_info(s.stream)
                return True
            except NotFoundError:
                if not s.create_stream:
                    log.error("nats: stream %s does not exist (create_stream is false)", s.stream)
                    return False
            await self._js.add_stream(StreamConfig(
                name=s.stream, subjects=[f"{self.namespace}.>"], storage=StorageType.FILE,
                num_replicas=s.replicas, duplicate_window=s.duplicate_window,
            ))
            log.info("nats: created stream %s for %s.>", s.stream, self.namespace)
            return True
        except Exception as e:  # noqa: BLE001 - JetStream off, no permission, not ready: retry
            log.error("nats: cannot use stream %s: %s", s.stream, _why(e))
            return False

    def _set_ready(self, up: bool) -> None:
        if up != self._ready:
            self._ready = up
            self.observer.connected(self.kind, up)

    async def _on_error(self, e: Exception) -> None:
        log.warning("nats: %s", _why(e))

    async def _on_disconnected(self) -> None:
        if self._ready:
            log.warning("nats: disconnected; records routed reliably to nats are answered 503 until it is back")
        self._set_ready(False)

    async def _on_reconnected(self) -> None:
        log.info("nats: reconnected")
        self._set_ready(True)

    def _send(self, batch: list[Pending]) -> None:
        if not self._ready or self._nc is None or not self._nc.is_connected:
            fail_all(batch, "nats is not connected")
            return
        assert self._loop is not None
        task = self._loop.create_task(self._publish(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, batch: list[Pending]) -> None:
        assert self._js is not None and self._loop is not None
        acks: dict[int, asyncio.Future] = {}
        expire_after(self._loop, self.ack_timeout, batch, "nats", on_expire=lambda p: _cancel(acks.get(id(p))))
        stream = self.settings.stream
        try:
            for p in batch:
                m = p.message
                ack = await self._js.publish_async(
                    m.channel, m.body, stream=stream, headers={MSG_ID_HEADER: m.key, SCHEMA_HEADER: _SCHEMA})
                acks[id(p)] = ack
                ack.add_done_callback(lambda f, p=p: self._confirm(p, f))
        except Exception as e:  # noqa: BLE001 - connection lost mid-batch, payload too large, …
            error = DispatchFailed(f"nats: {_why(e)}")
            for p in batch:
                if id(p) not in acks:
                    settle(p.future, error=error)

    def _confirm(self, p: Pending, ack: asyncio.Future) -> None:
        if ack.cancelled():
            return
        error = ack.exception()
        if error is None:
            settle(p.future, Delivery(duplicate=bool(ack.result().duplicate)))
            return
        settle(p.future, error=DispatchFailed(f"nats refused the record: {_why(error)}"))
        from nats.js.errors import NoStreamResponseError

        if isinstance(error, NoStreamResponseError) and self._ready and self._loop is not None:
            # Nothing takes the subject: the stream was deleted, or the server came back
            # without its store.  Make it again (once at a time) and serve meanwhile.
            self._set_ready(False)
            self._connector = self._loop.create_task(self._restore_stream())

    async def _restore_stream(self) -> None:
        log.warning("nats: no stream takes %s.>; making sure %s exists", self.namespace, self.settings.stream)
        while not await self._ensure_stream():
            await asyncio.sleep(max(self.settings.reconnect_wait, 1.0))
        self._set_ready(True)

    async def stop(self) -> None:
        await super().stop()
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connector
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.ack_timeout)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.drain(), self.ack_timeout)
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._set_ready(False)


def _cancel(future: asyncio.Future | None) -> None:
    if future is not None and not future.done():
        future.cancel()  # releases nats-py's in-flight slot


def _why(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())[:300]
