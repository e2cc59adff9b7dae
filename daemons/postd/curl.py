"""The HTTP transport: POSTs prepared requests with pycurl, several at once, on reused
connections (`transport.Transport`; tests may use `transport.MemoryTransport` instead).

One CurlMulti owns the connection cache, so every request after the first reuses a
kept-alive connection (and its TLS session); over HTTPS, HTTP/2 is negotiated when the
collector offers it, and then all requests in flight share one connection (PIPEWAIT).
At most `max_in_flight` transfers run at once, each on an easy handle that is reused
for the next request. Proxies come from the environment, as curl reads them
(http_proxy, https_proxy, no_proxy). Nothing here decides what an answer means: a
finished transfer is handed back as an `outcome.Response`.
"""

from __future__ import annotations

import functools
import os

import pycurl

from telemetry.daemons.postd.endpoint import DeliverySettings, RequestRefused
from telemetry.daemons.postd.outcome import Response
from telemetry.daemons.postd.request import Request
from telemetry.version import __version__

BODY_KEEP = 2048
USER_AGENT = f"telempostd/{__version__}"
_RETRY_AFTER = b"retry-after:"


@functools.lru_cache(maxsize=8)
def _plain_success(status: int) -> Response:
    """A 2xx without a body: one value per status, not one per record."""
    return Response(status=status)


class _Slot:
    """An easy handle and what its current transfer has received.  The response's header
    lines are only kept (curl calls a bound `list.append`, no Python frame per line) and
    looked through for Retry-After when the answer is not a 2xx."""

    __slots__ = ("curl", "token", "body", "body_len", "headers")

    def __init__(self, curl: pycurl.Curl):
        self.curl = curl
        self.token: int | None = None
        self.body: list[bytes] = []
        self.body_len = 0
        self.headers: list[bytes] = []

    def reset(self, token: int) -> None:
        self.token = token
        self.body = []
        self.body_len = 0
        self.headers.clear()

    def on_body(self, data: bytes) -> None:
        if self.body_len < BODY_KEEP:
            self.body.append(data[: BODY_KEEP - self.body_len])
            self.body_len += len(data)

    def retry_after(self) -> str | None:
        """The last response's Retry-After (after a redirect or 100, the last one's counts)."""
        found = None
        for line in self.headers:
            if line[:12].lower() == _RETRY_AFTER:
                found = line[12:].decode("latin-1").strip()
            elif line[:5] == b"HTTP/":
                found = None
        return found


class CurlTransport:
    def __init__(self, settings: DeliverySettings):
        # `settings` passed endpoint.check_settings when the config was loaded; a file
        # that became unreadable since is curl's error on the first request.
        self.settings = settings
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
        self.multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, settings.max_in_flight)
        self._free = [self._new_slot() for _ in range(settings.max_in_flight)]
        self._busy: dict[pycurl.Curl, _Slot] = {}

    def _new_slot(self) -> _Slot:
        s = self.settings
        c = pycurl.Curl()
        slot = _Slot(c)
        c.setopt(pycurl.URL, s.url)
        c.setopt(pycurl.POST, 1)
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.USERAGENT, USER_AGENT)
        c.setopt(pycurl.CONNECTTIMEOUT, s.connect_timeout)
        c.setopt(pycurl.TIMEOUT, s.request_timeout)
        c.setopt(pycurl.TCP_KEEPALIVE, 1)
        c.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2TLS)
        c.setopt(pycurl.PIPEWAIT, 1)
        c.setopt(pycurl.WRITEFUNCTION, slot.on_body)
        c.setopt(pycurl.HEADERFUNCTION, slot.headers.append)
        # As the original: the CA bundle only when it is set and exists.
        if s.cainfo and os.path.isfile(s.cainfo):
            c.setopt(pycurl.CAINFO, s.cainfo)
        if s.client_cert:
            c.setopt(pycurl.SSLCERT, s.client_cert)
            c.setopt(pycurl.SSLKEY, s.client_key or s.client_cert)
        return slot

    def capacity(self) -> int:
        """How many more requests can start now."""
        return len(self._free)

    def submit(self, token: int, request: Request) -> None:
        """Start a transfer; a request curl refuses to send raises RequestRefused."""
        slot = self._free[-1]
        c = slot.curl
        try:
            c.setopt(pycurl.HTTPHEADER, request.headers)
            c.setopt(pycurl.POSTFIELDS, request.body)
        except (pycurl.error, TypeError, ValueError) as e:
            raise RequestRefused(f"curl refused the request: {e}") from None
        self._free.pop()
        slot.reset(token)
        self._busy[c] = slot
        self.multi.add_handle(c)

    def _perform(self) -> None:
        while True:
            ret, _ = self.multi.perform()
            if ret != pycurl.E_CALL_MULTI_PERFORM:
                return

    def _finished(self) -> list[tuple[int, Response]]:
        done: list[tuple[int, Response]] = []
        while True:
            queued, ok, failed = self.multi.info_read()
            for c in ok:
                slot = self._busy[c]
                status = c.getinfo(pycurl.RESPONSE_CODE)
                if 200 <= status <= 299 and not slot.body:
                    response = _plain_success(status)
                else:
                    response = Response(status=status, retry_after=slot.retry_after(), body=b"".join(slot.body))
                done.append(self._release(c, response))
            for c, code, message in failed:
                done.append(self._release(c, Response(
                    status=c.getinfo(pycurl.RESPONSE_CODE), curl_error=code, curl_message=message,
                )))
            if not queued:
                return done

    def _release(self, c: pycurl.Curl, resp: Response) -> tuple[int, Response]:
        self.multi.remove_handle(c)
        slot = self._busy.pop(c)
        token, slot.token = slot.token, None
        assert token is not None  # set by submit for every busy slot
        slot.body = []
        slot.headers.clear()
        self._free.append(slot)
        return token, resp

    def poll(self, timeout: float) -> list[tuple[int, Response]]:
        """Drive the transfers; returns those that finished, waiting up to `timeout` s for one."""
        if not self._busy:
            return []
        self._perform()
        done = self._finished()
        if done:
            return done
        wait = self.multi.timeout()
        wait_s = timeout if wait < 0 else min(timeout, wait / 1000.0)
        if wait_s > 0:
            self.multi.select(wait_s)
        self._perform()
        return self._finished()

    def close(self) -> None:
        for c in list(self._busy):
            self.multi.remove_handle(c)
        for slot in list(self._busy.values()) + self._free:
            slot.curl.close()
        self._busy.clear()
        self._free = []
        self.multi.close()
