"""telemetry-collector: serve the ingestion API, or purge and inspect the record store.

    telemetry-collector [serve] [--listen HOST:PORT] [--database URL] [--tid TID ...] [TLS options]
    telemetry-collector purge [--database URL] [--purge-days N] [--purge-filter FIELD=VALUE:DAYS ...]
    telemetry-collector stats [--database URL]

The server is the ASGI application in `app` on uvicorn (one process, one event loop, one
writer thread; see the README for why).  It binds its socket before serving and prints
``listening on URL`` on stdout once it accepts requests, which is how programs that start
it (tests, benchmarks, the demo) learn a port chosen with ``--listen 127.0.0.1:0``; under
systemd it takes a socket passed by socket activation and reports READY.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import ssl
import time

import click

from telemetry import log as logsetup
from telemetry.cli import CONTEXT_SETTINGS, handle_errors, version_option
from telemetry.config import DEFAULT_TID
from telemetry.errors import TelemetryError

from . import server
from .app import DEFAULT_MAX_BODY, CollectorApp, Settings
from .dburl import parse_database_url
from .purge import DEFAULT_DAYS, PurgePolicy, PurgeSpecError, check_days, parse_filter
from .server import announce_ready
from .store import Durability, open_store
from .writer import Stats

PROG = "telemetry-collector"
DEFAULT_LISTEN = "127.0.0.1:8080"
MAX_BODY_CEILING = 75 << 20  # the reference deployment's nginx client_max_body_size
ENV_PREFIX = "TELEMETRY_COLLECTOR"
log = logging.getLogger(PROG)


class ListenError(TelemetryError):
    pass


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or :PORT (all interfaces)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise ListenError(f"--listen {value!r}: expected HOST:PORT with a port 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port_text)


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ListenError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    # The protocol number matters: asyncio sets TCP_NODELAY on accepted connections only
    # when the listening socket says IPPROTO_TCP (without it, keep-alive answers wait ~40 ms).
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        hint = " (is another collector running?)" if e.errno == errno.EADDRINUSE else ""
        raise ListenError(f"cannot listen on {host}:{port}: {e.strerror}{hint}") from None
    return sock


def systemd_socket() -> socket.socket | None:
    try:
        from systemd import daemon
    except ImportError:
        return None
    fds = daemon.listen_fds()
    return socket.socket(fileno=fds[0]) if fds else None


def check_tids(tids: tuple[str, ...]) -> tuple[str, ...]:
    for tid in tids:
        if not tid or tid != tid.strip() or not tid.isprintable():
            raise click.BadParameter(f"{tid!r} is not a usable telemetry ID (printable, no surrounding spaces)")
    return tids


def check_tls(cert: str | None, key: str | None, client_ca: str | None) -> None:
    if (cert is None) != (key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if client_ca is not None and cert is None:
        raise click.UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    if cert is None:
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise TelemetryError(f"cannot use --tls-cert {cert} / --tls-key {key}: {e}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as e:
            raise TelemetryError(f"cannot use --tls-client-ca {client_ca}: {e}") from None


def purge_policy(days: int, filters: tuple[str, ...]) -> PurgePolicy:
    try:
        return PurgePolicy(check_days(days, "--purge-days"), tuple(parse_filter(f) for f in filters))
    except PurgeSpecError as e:
        raise click.BadParameter(str(e)) from None


def database_option(f):
    return click.option(
        "--database", "database", metavar="URL", envvar=f"{ENV_PREFIX}_DATABASE", show_envvar=True,
        help="sqlite:///relative.db, sqlite:////absolute.db, a file path, or postgresql://… "
        "[default: records.db in the user's state directory]",
    )(f)


def purge_options(default_days: int):
    def decorate(f):
        f = click.option(
            "--purge-filter", "purge_filters", multiple=True, metavar="FIELD=VALUE:DAYS",
            help="Keep records matching FIELD=VALUE for DAYS days instead (0: forever); FIELD is "
            "severity, classification ('*' matches anything) or machine_id. Repeatable.",
        )(f)
        return click.option(
            "--purge-days", type=int, default=default_days, show_default=True, metavar="N",
            help="Delete records received more than N days ago (0: keep them).",
        )(f)

    return decorate


class _DefaultServe(click.Group):
    """`telemetry-collector --listen …` means `telemetry-collector serve --listen …`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        passthrough = {"-h", "--help", "-V", "--version"}
        if not args or (args[0] not in self.commands and args[0] not in passthrough):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


EPILOG = f"""\b
Environment:
  {ENV_PREFIX}_LISTEN    serve's --listen
  {ENV_PREFIX}_DATABASE  --database of every command
  {ENV_PREFIX}_TID       serve's --tid (several: separated by spaces)

\b
Files:
  $XDG_STATE_HOME/telemetrics/collector/records.db   the default database (SQLite, WAL);
                                                     for root, /root/.local/state/...

\b
Exit status:
  0  stopped by SIGTERM or SIGINT after the requests in flight; a command succeeded
  1  it cannot start or run (a bad option, a database or address it cannot use); one line
     says why

\b
Examples:
  telemetry-collector --listen 127.0.0.1:8080       serve (in telemetrics.conf:
                                                    server=http://127.0.0.1:8080/v2/collector)
  curl -s 'http://127.0.0.1:8080/api/records?limit=10'   the last records received
  telemetry-collector purge --purge-days 7          delete records older than a week
"""


@click.group(cls=_DefaultServe, context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@version_option
def main() -> None:
    """Reference collector for telemetry records (the telemetrics-backend ingestion API).

    Without a command, serves (see `telemetry-collector serve --help`): records POSTed to
    /v2/collector are checked field by field, stored, and answered with the stored record;
    GET /api/records queries them and GET /api/stats shows the counters.  Started by
    systemd with a listening socket, it serves on that socket.
    """


@main.command(context_settings=CONTEXT_SETTINGS)
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT",
              envvar=f"{ENV_PREFIX}_LISTEN", show_envvar=True,
              help="Address to serve on; port 0 picks a free port (printed on stdout).")
@database_option
@click.option("--tid", "tids", multiple=True, metavar="TID", envvar=f"{ENV_PREFIX}_TID", show_envvar=True,
              callback=lambda ctx, param, value: check_tids(value),
              help=f"Telemetry ID accepted in X-Telemetry-TID (repeatable) [default: {DEFAULT_TID}]")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), metavar="PEM",
              help="Serve HTTPS with this certificate chain.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), metavar="PEM",
              help="Private key of --tls-cert.")
@click.option("--tls-client-ca", type=click.Path(exists=True, dir_okay=False), metavar="PEM",
              help="Require client certificates signed by these CAs (mutual TLS).")
@click.option("--max-body", type=click.IntRange(0, MAX_BODY_CEILING), default=DEFAULT_MAX_BODY,
              show_default=True, metavar="BYTES", help="Largest request body accepted (413 beyond).")
@click.option("--durability", type=click.Choice([d.value for d in Durability]), default=Durability.FULL.value,
              show_default=True, help="full: a record is on disk before it is answered; relaxed: it survives "
              "a collector crash, but a power cut can lose the last moments (SQLite synchronous=NORMAL, "
              "PostgreSQL synchronous_commit=off).")
@purge_options(DEFAULT_DAYS)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="Log every request line.")
@handle_errors
def serve(listen: str, database: str | None, tids: tuple[str, ...], tls_cert: str | None,
          tls_key: str | None, tls_client_ca: str | None, max_body: int, durability: str, purge_days: int,
          purge_filters: tuple[str, ...], log_level: str, access_log: bool) -> None:
    """Serve POST /v2/collector, GET /api/records and GET /api/stats."""
    logsetup.setup(PROG, log_level)
    policy = purge_policy(purge_days, purge_filters)
    check_tls(tls_cert, tls_key, tls_client_ca)
    host, port = parse_listen(listen)
    url = parse_database_url(database)
    mode = Durability(durability)
    writer_store = open_store(url, durability=mode)
    try:
        reader_store = open_store(url, migrate=False)
    except BaseException:
        writer_store.close()
        raise
    settings = Settings(tids=frozenset(tids or (DEFAULT_TID,)), max_body=max_body, purge=policy, durability=mode)
    app = CollectorApp(url, settings, writer_store=writer_store, reader_store=reader_store)
    try:
        sock = systemd_socket() or bind(host, port)
    except BaseException:
        writer_store.close()
        reader_store.close()
        raise

    def ready(address: str) -> None:
        log.info("serving %s, records in %s", address, url.redacted())
        announce_ready(address)

    started = server.serve(app, sock, tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca,
                           log_level=log_level, access_log=access_log, on_ready=ready)
    if not started:
        raise TelemetryError("the server did not start; see the messages above")



@main.command(context_settings=CONTEXT_SETTINGS)
@database_option
@purge_options(DEFAULT_DAYS)
@handle_errors
def purge(database: str | None, purge_days: int, purge_filters: tuple[str, ...]) -> None:
    """Delete records older than the retention policy allows (as the reference's daily purge)."""
    policy = purge_policy(purge_days, purge_filters)
    store = open_store(parse_database_url(database))
    try:
        deleted = store.purge(policy, int(time.time()))
    finally:
        store.close()
    click.echo(f"deleted {deleted} records")


@main.command(context_settings=CONTEXT_SETTINGS)
@database_option
@handle_errors
def stats(database: str | None) -> None:
    """Print the record count and counters as JSON."""
    store = open_store(parse_database_url(database))
    try:
        document = Stats(records=store.count_records(), counters=store.counters()).document()
    finally:
        store.close()
    click.echo(json.dumps(document, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
