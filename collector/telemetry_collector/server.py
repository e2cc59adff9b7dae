"""Running the application on uvicorn: the guarded protocol, TLS, file limits, readiness.

uvicorn parses HTTP/1.1 with httptools (llhttp, C), about twice as fast here as h11 (pure
Python).  Its protocol is used through `protocol.guarded_protocol`, which adds what a
server on a network needs and uvicorn lacks: head and body deadlines, a head size bound,
connection caps in total and per address, and dropping readers that stall.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import resource
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any

import click

from telemetry.errors import TelemetryError

from .protocol import Guard, protocol_options

log = logging.getLogger("telemetry-collector")

GRACEFUL_SHUTDOWN = 10  # seconds for requests in flight at SIGTERM
SPARE_FILES = 64  # descriptors beyond the connections: databases, logs, the listener


class MissingDependency(TelemetryError):
    pass


def raise_file_limit(connections: int) -> int:
    """Raise the soft limit on open files so `connections` fit; returns how many do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return connections
    return max(0, min(connections, soft - SPARE_FILES))


def serve(app: Callable, sock: socket.socket, guard: Guard, *, tls_cert: str | None, tls_key: str | None,
          tls_client_ca: str | None, log_level: str, access_log: bool, on_ready: Callable[[str], None]) -> bool:
    """Serve until SIGTERM/SIGINT; False if the server never started."""
    try:
        import uvicorn
    except ImportError:
        from .dependencies import hint

        raise MissingDependency(f"the collector needs uvicorn: {hint('uvicorn')}") from None

    config = uvicorn.Config(
        app,
        **protocol_options(guard),
        ws="none",
        lifespan="on",
        interface="asgi3",
        log_config=None,
        log_level=log_level,
        access_log=access_log,
        server_header=False,
        **_newer_settings(uvicorn.Config, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN),
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
        loop = asyncio.get_running_loop()
        if tls_cert is not None:
            _bound_tls_handshakes(loop, guard.limits.head_timeout)
        task = loop.create_task(announce())
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


def _bound_tls_handshakes(loop: asyncio.AbstractEventLoop, seconds: float) -> None:
    """A TLS handshake gets head_timeout, as a request head does (asyncio's default is 60 s,
    and uvicorn has no setting): a client that connects and never completes it holds a
    descriptor no longer than one that never finishes its head.  The guard sees a connection
    only once its handshake is done, so this bound lives where uvicorn creates its server."""
    create_server = loop.create_server

    def bounded(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", seconds)
        return create_server(*args, **kwargs)

    loop.create_server = bounded  # type: ignore[method-assign]


def _newer_settings(config: type, **settings: Any) -> dict[str, Any]:
    """The settings this uvicorn knows.  Debian 12's (0.17) has no graceful-shutdown time:
    at SIGTERM it waits for the requests in flight without a limit, and systemd's stop
    timeout is the bound."""
    known = inspect.signature(config).parameters
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
