"""ZeroMQ PUB through pyzmq, as fleet-telemetry has: fast, and not reliable.

Each record is two frames: the topic (``<namespace>.<domain>``, so a subscriber filters by
prefix) and the JSON message.  PUB never waits: a subscriber that is slow (past
``send_hwm`` queued messages) or not yet connected misses records, which is why a zmq
route cannot be the one that decides the answer.  ``mode = "bind"`` listens on the
endpoint (one worker only: two processes cannot bind one address); ``"connect"`` dials a
subscriber or an XSUB proxy that binds, which works with any number of workers.
"""

from __future__ import annotations

from typing import Any

from .base import Delivery, Dispatcher, DispatchFailed, Observer, Pending, settle
from .config import DispatchConfigError, Kind, ZmqMode, ZmqSettings

_DONE = Delivery()


class ZmqDispatcher(Dispatcher):
    kind = Kind.ZMQ

    def __init__(self, settings: ZmqSettings, observer: Observer):
        super().__init__(observer)
        self.settings = settings
        self._socket: Any = None  # a zmq.Socket, imported on start

    async def start(self) -> None:
        await super().start()
        try:
            import zmq
        except ImportError:
            raise DispatchFailed("the zmq dispatcher needs pyzmq: pip install 'telemetry-collector[zmq]'") from None
        s = self.settings
        sock: Any = zmq.Context.instance().socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, s.send_hwm)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if s.mode is ZmqMode.BIND:
                sock.bind(s.endpoint)
            else:
                sock.connect(s.endpoint)
        except zmq.ZMQError as e:
            sock.close()
            raise DispatchConfigError(f"[zmq] cannot {s.mode.value} {s.endpoint}: {e}") from None
        self._socket = sock
        self.observer.connected(self.kind, True)

    def _send(self, batch: list[Pending]) -> None:
        import zmq

        sock = self._socket
        for p in batch:
            try:
                if sock is None:
                    raise DispatchFailed("the zmq socket is closed")
                sock.send_multipart((p.message.channel.encode(), p.message.body), flags=zmq.NOBLOCK)
                settle(p.future, _DONE)
            except (zmq.ZMQError, DispatchFailed) as e:
                settle(p.future, error=DispatchFailed(f"zmq: {e}"))

    async def stop(self) -> None:
        await super().stop()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self.observer.connected(self.kind, False)
