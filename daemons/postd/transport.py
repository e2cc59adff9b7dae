"""How telempostd's loop talks HTTP: a `Transport` takes prepared requests and hands back
finished ones.  `curl.CurlTransport` is the real one (pycurl, keep-alive, several in
flight); `MemoryTransport` answers in memory, for tests of everything around it, as
httpx's MockTransport does.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from telemetry.daemons.postd.endpoint import DeliverySettings, RequestRefused
from telemetry.daemons.postd.outcome import Response
from telemetry.daemons.postd.request import Request

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see telemetry/__init__.py)
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object  # Transport is a type for the checkers; nothing tests it at run time


class Transport(Protocol):
    def capacity(self) -> int:
        """How many more requests can start now."""
        ...

    def submit(self, token: int, request: Request) -> None:
        """Start a request; RequestRefused if it cannot be sent at all."""
        ...

    def poll(self, timeout: float) -> list[tuple[int, Response]]:
        """The requests that finished, waiting up to `timeout` seconds for one."""
        ...

    def close(self) -> None:
        ...


TransportFactory = Callable[[DeliverySettings], Transport]


class MemoryTransport:
    """Answers each request with `handler(request)`, called when it is submitted; `poll`
    hands the answers back in the order the requests were submitted.

    `handler` may raise RequestRefused (the request cannot be sent).  `sent` keeps every
    request submitted, with its token.  Up to `max_in_flight` requests are open at once;
    `poll` finishes at most `per_poll` of them (None: all), so a test can hold some in
    flight while others finish.
    """

    def __init__(self, handler: Callable[[Request], Response], max_in_flight: int = 4,
                 per_poll: int | None = None):
        self.handler = handler
        self.max_in_flight = max_in_flight
        self.per_poll = per_poll
        self.sent: list[tuple[int, Request]] = []
        self.closed = False
        self._open: collections.deque[tuple[int, Response]] = collections.deque()

    @classmethod
    def factory(cls, handler: Callable[[Request], Response], **kw: int | None) -> TransportFactory:
        """A TransportFactory for Postd: each transport it makes uses `handler`."""
        return lambda settings: cls(handler, max_in_flight=settings.max_in_flight, **kw)  # type: ignore[arg-type]

    def capacity(self) -> int:
        return self.max_in_flight - len(self._open)

    def submit(self, token: int, request: Request) -> None:
        if self.capacity() <= 0:
            raise RuntimeError("submit beyond capacity")
        response = self.handler(request)
        self.sent.append((token, request))
        self._open.append((token, response))

    def poll(self, timeout: float) -> list[tuple[int, Response]]:
        n = len(self._open) if self.per_poll is None else min(self.per_poll, len(self._open))
        return [self._open.popleft() for _ in range(n)]

    def close(self) -> None:
        self.closed = True
        self._open.clear()


__all__ = ["MemoryTransport", "RequestRefused", "Transport", "TransportFactory"]
