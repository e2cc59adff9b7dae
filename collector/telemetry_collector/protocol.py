"""uvicorn's HTTP/1.1 protocol (httptools) with the limits a server on a network needs.

uvicorn bounds neither the time a client takes to send its request head nor, with
httptools, the head's size, and it caps connections only globally (503 per request).  So
1,000 clients trickling a byte at a time keep every slot and everyone else waits.
`guarded_protocol` subclasses `HttpToolsProtocol` and adds, per connection:

- admission: at most `max_connections` open connections, `max_connections_per_address`
  from one client address (trusted proxies count only towards the total); beyond, the
  client gets a 503 with Retry-After and is closed;
- a head deadline (`head_timeout`) from the connection's start, and for each later
  request from its first byte, to the end of its head: 408 and close;
- a head size bound (`max_header_bytes`), counted while the head arrives so a trickled or
  endless head costs no more than the bound: 431 and close;
- a body deadline (`body_timeout`) from the end of the head: 408 (the request handler sees
  the client as gone) and close;
- a stalled reader: a response the client takes no bytes of for `idle_timeout` is dropped.
  uvicorn's own keep-alive timeout (the same setting) closes idle connections between
  requests;
- the verified client certificate, read once, in the ASGI scope (`identity.SCOPE_KEY`).

It relies on httptools' callback interface (on_message_begin, on_url, on_header,
on_headers_complete, on_message_complete), which uvicorn's protocol implements, and on a
few of uvicorn's names (transport, cycle, client, flow, keep-alive timer); the process
tests run it on every change, and collector/pyproject.toml bounds the uvicorn version.
Every refusal is reported to `Guard.refused`, which counts and logs it.
"""

from __future__ import annotations

import asyncio
import enum
import http
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import identity
from .limits import Admission, ConnectionCounter, Limits

log = logging.getLogger("telemetry-collector")

BUSY_RETRY_AFTER = 1  # s, in the 503 of a refused connection
UNIX_PEER = "unix"


class Refusal(enum.Enum):
    """Connection-level refusals; the value names the counter (``refused.<value>``)."""

    CONNECTIONS_TOTAL = Admission.TOO_MANY.value
    CONNECTIONS_PER_ADDRESS = Admission.TOO_MANY_FROM_ADDRESS.value
    HEAD_TIMEOUT = "head_timeout"
    HEAD_TOO_LARGE = "head_too_large"
    BODY_TIMEOUT = "body_timeout"
    MALFORMED = "malformed_request"
    STALLED_READER = "stalled_reader"


_ADMISSION_REFUSAL = {Admission.TOO_MANY: Refusal.CONNECTIONS_TOTAL,
                      Admission.TOO_MANY_FROM_ADDRESS: Refusal.CONNECTIONS_PER_ADDRESS}


@dataclass
class Guard:
    """What every connection of one server shares."""

    limits: Limits
    refused: Callable[[Refusal, str, str], None]  # (refusal, client address, detail)
    trusted_proxies: frozenset[str] = frozenset()
    connections: ConnectionCounter = field(init=False)

    def __post_init__(self) -> None:
        self.connections = ConnectionCounter(self.limits.max_connections, self.limits.max_connections_per_address,
                                             self.trusted_proxies)


class _StopParsing(Exception):
    """Raised from a parser callback after the connection was answered and closed."""


def _raw_response(status: int, message: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    body = (message + "\n").encode("ascii", "replace")
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", "content-type: text/plain; charset=utf-8",
             f"content-length: {len(body)}", "connection: close", *(f"{k}: {v}" for k, v in extra)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def guarded_protocol(guard: Guard) -> type[HttpToolsProtocol]:
    limits = guard.limits

    class GuardedHttpTools(HttpToolsProtocol):
        _peer = UNIX_PEER
        _admitted = False
        _closed_by_guard = False
        _in_head = True  # between the end of a request (or the connection's start) and its next head's end
        _head_raw = 0  # bytes of chunks that arrived while the head was incomplete
        _head_size = 0  # the head as the parser reported it
        _heads_done = 0  # heads completed on this connection
        _head_timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None
        _stall_timer: asyncio.TimerHandle | None = None
        _received_any = False
        _certificate: dict[object, object] | None = None  # the scope extension of the client certificate

        # --- connection -------------------------------------------------------------
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._peer = self.client[0] if self.client else UNIX_PEER
            admission = guard.connections.admit(self._peer)
            if admission is not Admission.ADMITTED:
                self._refuse(_ADMISSION_REFUSAL[admission], 503,
                             "Too many connections; try again later",
                             extra=(("retry-after", str(BUSY_RETRY_AFTER)),),
                             detail=f"{guard.connections.from_address(self._peer)} open from this address, "
                                    f"{guard.connections.open} in total")
                return
            self._admitted = True
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                cert = identity.from_peercert(ssl_object.getpeercert())
                self._certificate = None if cert is None else identity.scope_extension(cert)
            self._head_timer = self.loop.call_later(limits.head_timeout, self._head_expired)

        def connection_lost(self, exc: Exception | None) -> None:
            for timer in (self._head_timer, self._body_timer, self._stall_timer):
                if timer is not None:
                    timer.cancel()
            self._head_timer = self._body_timer = self._stall_timer = None
            if self._admitted:
                self._admitted = False
                guard.connections.release(self._peer)
            super().connection_lost(exc)

        def _refuse(self, refusal: Refusal, status: int | None, message: str, *,
                    extra: tuple[tuple[str, str], ...] = (), detail: str = "") -> None:
            """Answer (when `status` is given and no answer is under way), close, report."""
            if self._closed_by_guard:
                return
            self._closed_by_guard = True
            guard.refused(refusal, self._peer, detail or message)
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if self._in_head:  # between requests: the last one, if any, is answered
                may_answer = cycle is None or cycle.response_complete
            else:  # within a request: only if its handler has not answered yet
                may_answer = cycle is not None and not cycle.response_started
            if status is not None and may_answer:
                self.transport.write(_raw_response(status, message, extra))
            if not self._in_head and cycle is not None and not cycle.response_complete:
                # The request's handler sees the client as gone and answers nothing more.
                cycle.disconnected = True
                cycle.message_event.set()
            self.transport.close()

        # --- bytes in -------------------------------------------------------------------
        def data_received(self, data: bytes) -> None:
            if self._closed_by_guard:
                return
            self._received_any = True
            self._unset_keepalive_if_required()
            head_was_open, heads_done = self._in_head, self._heads_done
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                pass  # served as plain HTTP: no upgrade is offered
            except httptools.HttpParserError as e:
                if not self._closed_by_guard:
                    self._refuse(Refusal.MALFORMED, 400, "Invalid HTTP request", detail=str(e)[:100])
                return
            if head_was_open and self._heads_done == heads_done and not self._closed_by_guard:
                # The whole chunk belongs to a head that is still incomplete.
                self._head_raw += len(data)
                if limits.max_header_bytes and self._head_raw > limits.max_header_bytes:
                    self._refuse(Refusal.HEAD_TOO_LARGE, 431, self._too_large_message(),
                                 detail=f"over {limits.max_header_bytes} bytes and not complete")

        def _too_large_message(self) -> str:
            return f"Request head over {limits.max_header_bytes} bytes"

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_size = 0
            if self._certificate is not None:
                self.scope["extensions"] = {identity.SCOPE_KEY: self._certificate}
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(limits.head_timeout, self._head_expired)

        def on_url(self, url: bytes) -> None:
            self._head_size += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_size += len(name) + len(value) + 4
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if limits.max_header_bytes and self._head_size > limits.max_header_bytes:
                self._refuse(Refusal.HEAD_TOO_LARGE, 431, self._too_large_message(),
                             detail=f"{self._head_size} bytes")
                raise _StopParsing
            self._in_head = False
            self._head_raw = 0
            self._heads_done += 1
            self._body_timer = self.loop.call_later(limits.body_timeout, self._body_expired)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            self._in_head = True
            super().on_message_complete()

        # --- deadlines ------------------------------------------------------------------
        def _head_expired(self) -> None:
            self._head_timer = None
            if self._received_any:
                self._refuse(Refusal.HEAD_TIMEOUT, 408, "Request head not received in time",
                             detail=f"head incomplete after {limits.head_timeout:g} s")
            else:
                self._refuse(Refusal.HEAD_TIMEOUT, None, "", detail=f"nothing sent in {limits.head_timeout:g} s")

        def _body_expired(self) -> None:
            self._body_timer = None
            self._refuse(Refusal.BODY_TIMEOUT, 408, "Request body not received in time",
                         detail=f"body incomplete after {limits.body_timeout:g} s")

        # --- bytes out ------------------------------------------------------------------
        def pause_writing(self) -> None:
            super().pause_writing()
            if self._stall_timer is None:
                self._stall_timer = self.loop.call_later(limits.idle_timeout, self._stalled)

        def resume_writing(self) -> None:
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None
            super().resume_writing()

        def _stalled(self) -> None:
            self._stall_timer = None
            if self._closed_by_guard:
                return
            self._closed_by_guard = True
            guard.refused(Refusal.STALLED_READER, self._peer,
                          f"took no response bytes for {limits.idle_timeout:g} s")
            self.transport.abort()

    return GuardedHttpTools


def protocol_options(guard: Guard) -> dict[str, Any]:
    """uvicorn.Config keywords that go with the guarded protocol."""
    return {
        "http": guarded_protocol(guard),
        "limit_concurrency": None,  # the guard admits connections
        "timeout_keep_alive": guard.limits.idle_timeout,
        "proxy_headers": bool(guard.trusted_proxies),
        "forwarded_allow_ips": sorted(guard.trusted_proxies) or None,
    }
