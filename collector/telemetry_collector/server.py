"""Running the application on uvicorn: protocol choice, limits, TLS, readiness.

uvicorn parses HTTP/1.1 with httptools (llhttp, C) when it is installed, about twice as
fast here as h11 (pure Python).  uvicorn's httptools protocol sets no limit on the request
head, though, while h11 stops at 16 KiB; `BoundedHttpTools` restores the bound by counting
the bytes that arrive before the headers are complete and answering 400 and closing the
connection past HEAD_LIMIT.  Without httptools the server uses h11 and its own bound.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable

import click

from telemetry.errors import TelemetryError

log = logging.getLogger("telemetry-collector")

HEAD_LIMIT = 64 * 1024  # bytes of request line and headers
KEEP_ALIVE = 30  # seconds an idle kept-alive connection stays open
MAX_CONNECTIONS = 1024  # beyond: 503
GRACEFUL_SHUTDOWN = 10  # seconds for requests in flight at SIGTERM


class MissingDependency(TelemetryError):
    pass


def _bounded_httptools() -> type | None:
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None
    if not all(hasattr(HttpToolsProtocol, m) for m in ("data_received", "on_message_begin",
                                                      "on_headers_complete", "send_400_response")):
        return None

    class BoundedHttpTools(HttpToolsProtocol):
        _in_head = True
        _head_bytes = 0

        def on_message_begin(self) -> None:
            self._in_head, self._head_bytes = True, 0
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._head_bytes += len(data)
                if self._head_bytes > HEAD_LIMIT:
                    log.warning("closed a connection from %s: request head over %d bytes",
                                (self.client or ("?",))[0], HEAD_LIMIT)
                    self.send_400_response("Request head too large.")
                    return
            super().data_received(data)

    return BoundedHttpTools


def serve(app: Callable, sock: socket.socket, *, tls_cert: str | None, tls_key: str | None,
          tls_client_ca: str | None, log_level: str, access_log: bool, on_ready: Callable[[str], None]) -> bool:
    """Serve until SIGTERM/SIGINT; False if the server never started."""
    try:
        import uvicorn
    except ImportError:
        from .dependencies import hint

        raise MissingDependency(f"the collector needs uvicorn: {hint('uvicorn')}") from None

    protocol = _bounded_httptools()
    config = uvicorn.Config(
        app,
        http=protocol or "h11",
        **_newer_settings(uvicorn.Config, h11_max_incomplete_event_size=HEAD_LIMIT,
                          timeout_graceful_shutdown=GRACEFUL_SHUTDOWN),
        lifespan="on",
        interface="asgi3",
        log_config=None,
        log_level=log_level,
        access_log=access_log,
        proxy_headers=False,
        server_header=False,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=KEEP_ALIVE,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        ssl_ca_certs=tls_client_ca,
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls_client_ca else ssl.CERT_NONE,
    )
    server = uvicorn.Server(config)
    address = url_of(sock, tls_cert is not None)

    async def announce() -> None:
        while not server.started and not server.should_exit:
            await asyncio.sleep(0.01)
        if server.started:
            on_ready(address)

    async def run() -> None:
        task = asyncio.get_running_loop().create_task(announce())
        try:
            await server.serve(sockets=[sock])
        finally:
            task.cancel()

    # uvicorn re-raises the stop signal after its graceful shutdown; a SIGTERM that stopped
    # the server cleanly should end the program with status 0, as systemd expects.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        asyncio.run(run())
    finally:
        signal.signal(signal.SIGTERM, previous)
    return bool(server.started)


def _newer_settings(config: type, **settings: object) -> dict[str, object]:
    """The settings this uvicorn knows.  Debian 12's (0.17) has neither: its h11 parser keeps
    h11's own 16 KiB bound on the request head, and at SIGTERM it waits for the requests in
    flight without a time limit (systemd's stop timeout is then the bound)."""
    known = inspect.signature(config.__init__).parameters
    return {k: v for k, v in settings.items() if k in known}


def url_of(sock: socket.socket, tls: bool) -> str:
    name = sock.getsockname()
    if isinstance(name, str | bytes):  # a unix socket handed over by systemd
        return f"{'https' if tls else 'http'}+unix://{os.fsdecode(name)}"
    host, port = name[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def announce_ready(address: str) -> None:
    """The line programs that start a collector wait for, and READY for systemd."""
    click.echo(f"listening on {address}")
    sys.stdout.flush()
    try:
        from systemd import daemon

        daemon.notify(f"READY=1\nSTATUS=serving {address}")
    except Exception:  # noqa: BLE001 - no systemd: nothing to tell
        pass
