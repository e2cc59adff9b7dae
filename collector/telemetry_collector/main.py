"""telemetry-collector: serve the ingestion API, or purge and inspect the record store.

    telemetry-collector [serve] [--listen HOST:PORT] [--database URL] [--tid TID ...] [TLS options] [limits]
                        [--dispatch FILE] [--workers N] [--metrics-auth]
    telemetry-collector token add NAME [--scope read|admin] [--certificate] [--database URL]
    telemetry-collector token list [--json] [--database URL]
    telemetry-collector token revoke NAME [--database URL]
    telemetry-collector purge [--database URL] [--purge-days N] [--purge-filter FIELD=VALUE:DAYS ...]
    telemetry-collector stats [--database URL]
    telemetry-collector regroup [--database URL]

The server is the ASGI application in `app` on uvicorn (per worker process one event loop
and one writer thread; see the README for why), behind the metrics middleware; with
``--workers N`` a supervisor (`workers`) forks N of them on one port.  It binds its socket before serving and prints
``listening on URL`` on stdout once it accepts requests, which is how programs that start
it (tests, benchmarks, the demo) learn a port chosen with ``--listen 127.0.0.1:0``; under
systemd it takes a socket passed by socket activation and reports READY.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import logging
import shutil
import socket
import ssl
import time
from typing import Any

import click

from telemetry import log as logsetup
from telemetry.cli import CONTEXT_SETTINGS, handle_errors, version_option
from telemetry.command import Group
from telemetry.config import DEFAULT_TID
from telemetry.errors import TelemetryError

from . import server
from .app import INGEST_PATHS, ROUTE_PATHS, CollectorApp, Settings, stats_document
from .credentials import (
    Credential,
    CredentialError,
    Kind,
    Scope,
    check_name,
    new_secret,
    secret_hash,
)
from .dburl import parse_database_url
from .derive.hook import IngestHook, regroup_stored
from .dispatch import check_workers
from .dispatch.config import DispatchConfig, load_dispatch_config
from .limits import Limits
from .metrics_dir import prepare_directory, worker_exited
from .protocol import Guard
from .purge import DEFAULT_DAYS, PurgePolicy, PurgeSpecError, check_days, parse_filter
from .server import announce_ready
from .store import Durability, open_store
from .workers import MAX_WORKERS, Supervisor, reuseport_sockets

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


def bind(host: str, port: int, *, reuseport: bool = False) -> socket.socket:
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
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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


def check_addresses(values: tuple[str, ...]) -> tuple[str, ...]:
    """IP addresses, as the peer addresses of connections are compared with them."""
    out = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_address(value)))
        except ValueError:
            raise click.BadParameter(f"{value!r} is not an IP address (one proxy per option)") from None
    return tuple(out)


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


_DEFAULTS = Limits()
_SECONDS = click.FloatRange(0, 3600, min_open=True)
_COUNT = click.IntRange(0)
_RATE = click.FloatRange(0)
# (option, Limits field, type, metavar, help)
_LIMIT_OPTIONS = (
    ("--head-timeout", "head_timeout", _SECONDS, "SECONDS",
     "Time a client has, from connecting (or from a request's first byte), to send the request head; 408 "
     "and closed beyond.  With TLS, the handshake has as long again."),
    ("--body-timeout", "body_timeout", _SECONDS, "SECONDS",
     "Time a client has, after the head, to send the whole body; 408 and closed beyond."),
    ("--idle-timeout", "idle_timeout", _SECONDS, "SECONDS",
     "A kept-alive connection without a request, or a reader taking no response bytes, is closed after this."),
    ("--max-header-bytes", "max_header_bytes", _COUNT, "BYTES",
     "Largest request line and headers; 431 and closed beyond."),
    ("--max-body", "max_body", click.IntRange(0, MAX_BODY_CEILING), "BYTES",
     "Largest request body accepted; 413 beyond."),
    ("--max-connections", "max_connections", _COUNT, "N", "Open connections in total; 503 beyond."),
    ("--max-connections-per-address", "max_connections_per_address", _COUNT, "N",
     "Open connections from one client address; 503 beyond."),
    ("--machine-rate", "machine_rate", _RATE, "RECORDS/S",
     "Records per second one machine id may send, sustained (token bucket); 429 with Retry-After beyond."),
    ("--machine-burst", "machine_burst", _COUNT, "RECORDS", "Records one machine id may send at once."),
    ("--address-rate", "address_rate", _RATE, "RECORDS/S",
     "Records per second one client address may send, sustained; 429 with Retry-After beyond."),
    ("--address-burst", "address_burst", _COUNT, "RECORDS", "Records one client address may send at once."),
)


def limit_options(f):
    for option, name, kind, metavar, text in reversed(_LIMIT_OPTIONS):
        f = click.option(option, name, type=kind, default=getattr(_DEFAULTS, name), show_default=True,
                         metavar=metavar, help=text)(f)
    return f


def make_limits(values: dict[str, Any]) -> Limits:
    return Limits(**{name: values[name] for _, name, *_ in _LIMIT_OPTIONS})


class _DefaultServe(Group):
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


@click.group("telemetry-collector", cls=_DefaultServe, context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
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
@click.option("--durability", type=click.Choice([d.value for d in Durability]), default=Durability.FULL.value,
              show_default=True, help="full: a record is on disk before it is answered; relaxed: it survives "
              "a collector crash, but a power cut can lose the last moments (SQLite synchronous=NORMAL, "
              "PostgreSQL synchronous_commit=off).")
@click.option("--reads/--no-reads", default=True, show_default=True,
              help="Serve the read routes (/api/*) to holders of a read credential; --no-reads makes an "
              "ingest-only node, where they answer 404.")
@click.option("--payload-parsers/--no-payload-parsers", default=True, show_default=True,
              help="Run the payload parsers on each record as it arrives: the crash and kernel groups of the "
              "Crashes and Kernel views, and the installed parsers' facts. The views' counters are kept either way.")
@click.option("--machine-identity/--no-machine-identity", default=True, show_default=True,
              help="With --tls-client-ca: a record's Machine-Id must be the client certificate's subject "
              "Common Name (403 otherwise). --no-machine-identity for a fleet sharing one certificate.")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDRESS",
              callback=lambda ctx, param, value: check_addresses(value),
              help="A reverse proxy's address (repeatable): its X-Forwarded-For names the client for the "
              "per-address rate limit, and its connections count only towards --max-connections.")
@limit_options
@purge_options(DEFAULT_DAYS)
@click.option("--dispatch", "dispatch_file", type=click.Path(dir_okay=False), metavar="FILE",
              envvar=f"{ENV_PREFIX}_DISPATCH", show_envvar=True,
              help="TOML file routing records by classification to dispatchers (store, nats, kafka, zmq, "
              "log) and naming the one whose confirmation decides the answer [default: everything to "
              "the store].")
@click.option("--workers", type=click.IntRange(1, MAX_WORKERS), default=1, show_default=True, metavar="N",
              envvar=f"{ENV_PREFIX}_WORKERS", show_envvar=True,
              help="Worker processes serving the one port (use PostgreSQL for more than one; each has its "
              "own rate-limit buckets).")
@click.option("--metrics-auth/--no-metrics-auth", default=False, show_default=True,
              help="GET /metrics needs a read credential, as /api/* does (Prometheus: "
              "authorization.credentials_file with a token from 'token add NAME --scope read').")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.option("--access-log/--no-access-log", default=False, show_default=True,
              help="Log every request line.")
@handle_errors
def serve(listen: str, database: str | None, tids: tuple[str, ...], tls_cert: str | None,
          tls_key: str | None, tls_client_ca: str | None, durability: str, reads: bool, payload_parsers: bool,
          machine_identity: bool, trusted_proxies: tuple[str, ...], purge_days: int, purge_filters: tuple[str, ...],
          dispatch_file: str | None, workers: int, metrics_auth: bool, log_level: str,
          access_log: bool, **limit_values: Any) -> None:
    """Serve POST /v2/collector (open to every sender, within the limits below) and, to
    holders of a read credential, GET /api/records, /api/records/ID and /api/stats, and
    the web views under /telemetryui (GET / leads there): Records, Builds, Stats, Crashes,
    Kernel, Population and the installed plugin views (a browser asks for the token as
    the password of its login prompt, any user name); GET /metrics for Prometheus (open
    unless --metrics-auth).

    \b
    --dispatch FILE routes records by classification to the store, NATS JetStream, Kafka,
    ZeroMQ or the log; the route's reliable dispatcher decides the answer: 201 once it has
    the record, 503 with Retry-After when it could not confirm it (see the README and
    docs/collector-dispatch.toml).

    \b
    Reads need a credential: a bearer token (Authorization: Bearer TOKEN) made with
      telemetry-collector token add NAME --scope read --database URL
    or, with --tls-client-ca, a client certificate registered with
      telemetry-collector token add CN --certificate --database URL
    Without one a read is answered 401, with too small a scope 403.

    \b
    Limits (0 turns a count off): a client over one is refused and everyone else is
    served. Slow heads and bodies get 408, heads over --max-header-bytes 431, bodies over
    --max-body 413, connections over --max-connections(-per-address) 503 with Retry-After,
    records over a rate 429 with Retry-After (telempostd waits as told).
    """
    logsetup.setup(PROG, log_level)
    policy = purge_policy(purge_days, purge_filters)
    check_tls(tls_cert, tls_key, tls_client_ca)
    limits = make_limits(limit_values)
    usable = server.raise_file_limit(limits.max_connections)
    if usable < limits.max_connections:
        log.warning("the open-file limit allows %d connections, not --max-connections %d", usable,
                    limits.max_connections)
        limits = dataclasses.replace(limits, max_connections=usable)
    host, port = parse_listen(listen)
    url = parse_database_url(database)
    mode = Durability(durability)
    dispatch = load_dispatch_config(dispatch_file) if dispatch_file else DispatchConfig()
    check_workers(dispatch, workers)
    for route in dispatch.unreliable_routes():
        log.warning("records of %s are answered 201 before any dispatcher confirms them (no reliable "
                    "dispatcher among %s)", route.pattern, ", ".join(k.value for k in route.dispatchers))
    settings = Settings(tids=frozenset(tids or (DEFAULT_TID,)), limits=limits, purge=policy, durability=mode,
                        reads=reads, payload_parsers=payload_parsers, machine_identity=machine_identity)
    proxies = frozenset(trusted_proxies)
    metrics_dir, own_dir = prepare_directory()  # before prometheus-client is imported
    try:
        open_store(url, durability=mode).close()  # migrations, once, before any worker starts
        inherited = systemd_socket()
        sock = inherited or bind(host, port, reuseport=workers > 1)
        tls = {"tls_cert": tls_cert, "tls_key": tls_key, "tls_client_ca": tls_client_ca}

        def serve_here(index: int, worker_sock: socket.socket, on_ready) -> bool:
            app, guard = _worker_app(index, url, settings, dispatch, proxies, metrics_auth)
            return server.serve(app, worker_sock, guard, **tls, log_level=log_level, access_log=access_log,
                                on_ready=on_ready)

        address = server.url_of(sock, tls_cert is not None)

        def ready(_: str = "") -> None:
            log.info("serving %s with %d worker%s, records in %s", address, workers, "s" * (workers > 1),
                     url.redacted())
            announce_ready(address)

        if workers == 1:
            if not serve_here(0, sock, ready):
                raise TelemetryError("the server did not start; see the messages above")
            return
        sockets = [sock] if inherited else reuseport_sockets(sock, workers)
        supervisor = Supervisor(sockets, workers, lambda index, s, on_ready: 0 if serve_here(
            index, s, lambda _: on_ready()) else 1, on_exit=worker_exited)
        if supervisor.run(ready):
            raise TelemetryError("the workers did not start or did not stop cleanly; see the messages above")
    finally:
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _worker_app(index: int, url, settings: Settings, dispatch: DispatchConfig, proxies: frozenset[str],
                metrics_auth: bool):
    """In the process that serves: its connections, its metrics, the app behind the metrics
    middleware, and the protocol's guard."""
    from .metrics import Metrics, MetricsMiddleware, metrics_route

    metrics = Metrics()
    metrics.started()
    writer_store = open_store(url, migrate=False, durability=settings.durability)
    try:
        reader_store = open_store(url, migrate=False)
    except BaseException:
        writer_store.close()
        raise
    app = CollectorApp(url, settings, writer_store=writer_store, reader_store=reader_store, dispatch=dispatch,
                       observer=metrics, worker=index)
    app.add_routes([metrics_route(metrics, credential=metrics_auth)])
    guard = Guard(settings.limits, refused=lambda reason, client, detail: app.refuse(reason, client, detail),
                  trusted_proxies=proxies)
    return MetricsMiddleware(app, metrics, routes=ROUTE_PATHS, ingest=INGEST_PATHS), guard


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
        document = stats_document(store.count_records(), store.counters())
    finally:
        store.close()
    click.echo(json.dumps(document, indent=2, sort_keys=True))


@main.command(context_settings=CONTEXT_SETTINGS)
@database_option
@handle_errors
def regroup(database: str | None) -> None:
    """Group the stored crash and kernel records that have no group yet.

    Records are grouped as they arrive; this is for those stored before the web views
    existed (a database upgraded from an earlier version), or before a payload parser was
    installed. It can run while the collector serves, and again: a grouped record is left
    as it is.
    """
    store = open_store(parse_database_url(database))
    try:
        done = regroup_stored(store, IngestHook.installed())
    finally:
        store.close()
    click.echo(f"grouped {done} records")


@main.group(context_settings=CONTEXT_SETTINGS)
def token() -> None:
    """Manage read credentials: bearer tokens and client-certificate readers.

    \b
    Each command takes the --database of the collector it manages; a change takes effect
    on that collector's next request, without a restart. Secrets are stored only as
    SHA-256 hashes: a token is shown once, when it is made.
    """


@token.command("add", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@click.option("--scope", type=click.Choice([s.value for s in Scope]), default=Scope.READ.value, show_default=True,
              help="read: GET /api/records, /api/records/ID, /api/stats and the web views; admin: also "
              "GET /api/tokens, DELETE /api/tokens/NAME, and editing the never-guilty lists of the Crashes and "
              "Kernel views.")
@click.option("--certificate", is_flag=True,
              help="NAME is the subject Common Name of a client certificate (with serve --tls-client-ca): "
              "that certificate reads without a token. No secret is made.")
@database_option
@handle_errors
def token_add(name: str, scope: str, certificate: bool, database: str | None) -> None:
    """Make a credential NAME and print its secret (once; it cannot be shown again)."""
    try:
        check_name(name)
    except CredentialError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from None
    kind = Kind.CERTIFICATE if certificate else Kind.TOKEN
    secret = None if certificate else new_secret()
    store = open_store(parse_database_url(database))
    try:
        store.add_credential(Credential(name, kind, Scope(scope), int(time.time())),
                             None if secret is None else secret_hash(secret))
    finally:
        store.close()
    if secret is None:
        click.echo(f"certificate reader {name!r} added (scope {scope}): a client certificate with CN={name} "
                   "may read", err=True)
    else:
        click.echo(secret)
        click.echo(f"token {name!r} added (scope {scope}); this is the only time its secret is shown. "
                   "Send it as: Authorization: Bearer TOKEN", err=True)


@token.command("list", context_settings=CONTEXT_SETTINGS)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@database_option
@handle_errors
def token_list(as_json: bool, database: str | None) -> None:
    """List the credentials (never their secrets)."""
    store = open_store(parse_database_url(database))
    try:
        known = store.credentials()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([{"name": c.name, "kind": c.kind.value, "scope": c.scope.value, "created": c.created}
                               for c in known], indent=2))
        return
    if not known:
        click.echo("no credentials; make one with: telemetry-collector token add NAME --scope read", err=True)
        return
    width = max(len("NAME"), *(len(c.name) for c in known))
    click.echo(f"{'NAME':<{width}}  {'KIND':<11}  {'SCOPE':<5}  CREATED")
    for c in known:
        created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(c.created))
        click.echo(f"{c.name:<{width}}  {c.kind.value:<11}  {c.scope.value:<5}  {created}")


@token.command("revoke", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@database_option
@handle_errors
def token_revoke(name: str, database: str | None) -> None:
    """Remove the credential NAME; the collector refuses it from its next request on."""
    store = open_store(parse_database_url(database))
    try:
        removed = store.revoke_credential(name)
    finally:
        store.close()
    if not removed:
        raise TelemetryError(f"no credential named {name!r} (see: telemetry-collector token list)")
    click.echo(f"credential {name!r} revoked", err=True)


if __name__ == "__main__":
    main()
