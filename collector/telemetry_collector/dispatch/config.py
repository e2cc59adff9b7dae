"""The dispatch configuration: which dispatchers get which records (pure; no I/O).

A TOML file (``serve --dispatch FILE``) shaped like fleet-telemetry's ``records`` and
``reliable_ack_sources``::

    namespace = "telemetry"        # NATS subject / Kafka topic prefix
    ack_timeout = 5.0              # seconds a reliable dispatcher has to confirm a record
    retry_after = 10               # seconds, in the 503 a client gets when it did not

    [records]                      # classification pattern -> dispatchers; first match wins
    "org.clearlinux/crash/*" = ["store", "nats"]
    "*" = ["store"]

    [reliable_ack]                 # pattern (as in [records]) -> the dispatcher that decides
    "org.clearlinux/crash/*" = "nats"

    [nats]                         # servers, stream, create_stream, replicas, duplicate_window
    [kafka]                        # librdkafka settings, passed through
    [zmq]                          # endpoint, mode = "bind" | "connect"

A pattern's ``*`` matches any run of characters (``/`` included); everything else is
literal.  A route that lists ``store`` and names no reliable dispatcher is acknowledged by
the store, so the default configuration (``"*" = ["store"]``) is the collector without
dispatchers.  A route without any reliable dispatcher answers 201 once the record is handed
over; ``zmq`` and ``log`` cannot confirm anything and cannot be reliable.  If no pattern
catches every classification, ``"*" = ["store"]`` is added last, so no record is refused
for the configuration's sake; ``"*" = []`` drops what nothing else routes.
"""

from __future__ import annotations

import enum
import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from telemetry.errors import TelemetryError

DEFAULT_NAMESPACE = "telemetry"
DEFAULT_ACK_TIMEOUT = 5.0
DEFAULT_RETRY_AFTER = 10
DEFAULT_NATS_SERVER = "nats://127.0.0.1:4222"
DEFAULT_STREAM = "TELEMETRY"
CATCH_ALL = "*"
_NAMESPACE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
ROUTE_CACHE = 4096  # classifications whose route is remembered


class DispatchConfigError(TelemetryError):
    pass


class Kind(enum.Enum):
    """Every dispatcher there is; the value is its name in the configuration and metrics."""

    STORE = "store"
    NATS = "nats"
    KAFKA = "kafka"
    ZMQ = "zmq"
    LOG = "log"

    @property
    def can_confirm(self) -> bool:
        return self not in (Kind.ZMQ, Kind.LOG)

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def is_stream(self) -> bool:
        """Takes the JSON message (everything but the store)."""
        return self is not Kind.STORE


_LABELS = {Kind.STORE: "the database", Kind.NATS: "NATS JetStream", Kind.KAFKA: "Kafka", Kind.ZMQ: "ZeroMQ",
           Kind.LOG: "the log"}


@dataclass(frozen=True)
class Route:
    pattern: str
    dispatchers: tuple[Kind, ...]
    reliable: Kind | None

    def matches(self, classification: str) -> bool:
        return _compile(self.pattern).fullmatch(classification) is not None

    @property
    def needs_message(self) -> bool:
        return any(k.is_stream for k in self.dispatchers)


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


@dataclass(frozen=True)
class NatsSettings:
    servers: tuple[str, ...] = (DEFAULT_NATS_SERVER,)
    stream: str = DEFAULT_STREAM
    create_stream: bool = True
    replicas: int = 1
    duplicate_window: float = 120.0  # seconds JetStream remembers message ids
    credentials: str | None = None  # a .creds file
    connect_timeout: float = 2.0
    reconnect_wait: float = 0.5


class ZmqMode(enum.Enum):
    BIND = "bind"
    CONNECT = "connect"


@dataclass(frozen=True)
class ZmqSettings:
    endpoint: str = "tcp://127.0.0.1:5288"
    mode: ZmqMode = ZmqMode.BIND
    send_hwm: int = 100_000  # messages queued per subscriber before PUB drops


@dataclass(frozen=True)
class DispatchConfig:
    routes: tuple[Route, ...] = (Route(CATCH_ALL, (Kind.STORE,), Kind.STORE),)
    namespace: str = DEFAULT_NAMESPACE
    ack_timeout: float = DEFAULT_ACK_TIMEOUT
    retry_after: int = DEFAULT_RETRY_AFTER
    nats: NatsSettings = NatsSettings()
    kafka: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    zmq: ZmqSettings = ZmqSettings()
    source: str = "built-in"  # the file it came from, for messages

    @property
    def kinds(self) -> frozenset[Kind]:
        """The dispatchers some route uses: those to start."""
        return frozenset(k for r in self.routes for k in r.dispatchers)

    def route(self, classification: str) -> Route:
        return _route(self.routes, classification)

    def unreliable_routes(self) -> list[Route]:
        return [r for r in self.routes if r.reliable is None and r.dispatchers]


@functools.lru_cache(maxsize=ROUTE_CACHE)
def _route(routes: tuple[Route, ...], classification: str) -> Route:
    for r in routes:
        if r.matches(classification):
            return r
    raise AssertionError("the configuration always ends with a catch-all route")


# --- reading ---------------------------------------------------------------------------

_TOP_KEYS = {"namespace", "ack_timeout", "retry_after", "records", "reliable_ack", "nats", "kafka", "zmq"}
_NATS_KEYS = {"servers", "stream", "create_stream", "replicas", "duplicate_window", "credentials",
              "connect_timeout", "reconnect_wait"}
_ZMQ_KEYS = {"endpoint", "mode", "send_hwm"}


def load_dispatch_config(path: str) -> DispatchConfig:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise DispatchConfigError(f"cannot read dispatch configuration {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise DispatchConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise DispatchConfigError(f"{path}: not UTF-8 text") from None
    return parse_dispatch_config(doc, path)


def parse_dispatch_config(doc: Mapping[str, object], source: str = "built-in") -> DispatchConfig:
    def bad(where: str, message: str) -> DispatchConfigError:
        return DispatchConfigError(f"{source}: {where}: {message}")

    _no_unknown(doc, _TOP_KEYS, "top level", bad)
    namespace = _string(doc.get("namespace", DEFAULT_NAMESPACE), "namespace", bad)
    if not _NAMESPACE.fullmatch(namespace):
        raise bad("namespace", f"{namespace!r} must be 1-64 of A-Z a-z 0-9 _ -")
    ack_timeout = _number(doc.get("ack_timeout", DEFAULT_ACK_TIMEOUT), "ack_timeout", bad, 0.01, 600)
    retry_after = int(_number(doc.get("retry_after", DEFAULT_RETRY_AFTER), "retry_after", bad, 0, 86400,
                              integer=True))
    routes = _routes(_table(doc, "records", bad), _table(doc, "reliable_ack", bad), bad)
    nats = _nats(_table(doc, "nats", bad), bad)
    kafka = _kafka(_table(doc, "kafka", bad), bad)
    zmq = _zmq(_table(doc, "zmq", bad), bad)
    if Kind.KAFKA in {k for r in routes for k in r.dispatchers} and "bootstrap.servers" not in kafka:
        raise bad("[kafka]", "a route uses kafka: set \"bootstrap.servers\"")
    return DispatchConfig(routes=routes, namespace=namespace, ack_timeout=ack_timeout, retry_after=retry_after,
                          nats=nats, kafka=MappingProxyType(kafka), zmq=zmq, source=source)


def _routes(records: Mapping[str, object], reliable: Mapping[str, object], bad) -> tuple[Route, ...]:
    if not records:
        records = {CATCH_ALL: [Kind.STORE.value]}
    out: list[Route] = []
    for pattern, names in records.items():
        where = f"[records] {pattern!r}"
        if not pattern:
            raise bad(where, "the pattern is empty (use \"*\" for every classification)")
        if any(r.pattern == CATCH_ALL for r in out):
            raise bad(where, "comes after \"*\", which already takes every record")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad(where, "expected a list of dispatcher names")
        kinds = tuple(_kind(n, where, bad) for n in names)
        if len(set(kinds)) != len(kinds):
            raise bad(where, "a dispatcher is listed twice")
        out.append(Route(pattern, kinds, _reliable(pattern, kinds, reliable, bad)))
    for pattern in reliable:
        if pattern not in records:
            raise bad(f"[reliable_ack] {pattern!r}", "no such pattern in [records]")
    if not any(r.pattern == CATCH_ALL for r in out):
        out.append(Route(CATCH_ALL, (Kind.STORE,), Kind.STORE))
    return tuple(out)


def _reliable(pattern: str, kinds: tuple[Kind, ...], reliable: Mapping[str, object], bad) -> Kind | None:
    where = f"[reliable_ack] {pattern!r}"
    name = reliable.get(pattern)
    if name is None:
        return Kind.STORE if Kind.STORE in kinds else None
    if not isinstance(name, str):
        raise bad(where, "expected one dispatcher name")
    kind = _kind(name, where, bad)
    if not kind.can_confirm:
        raise bad(where, f"{kind.value} cannot confirm a record; use store, nats or kafka")
    if kind not in kinds:
        raise bad(where, f"{kind.value} is not among the route's dispatchers")
    return kind


def _kind(name: str, where: str, bad) -> Kind:
    try:
        return Kind(name)
    except ValueError:
        raise bad(where, f"unknown dispatcher {name!r} (known: {', '.join(k.value for k in Kind)})") from None


def _nats(table: Mapping[str, object], bad) -> NatsSettings:
    _no_unknown(table, _NATS_KEYS, "[nats]", bad)
    d = NatsSettings()
    servers = table.get("servers", list(d.servers))
    if isinstance(servers, str):
        servers = [servers]
    if not isinstance(servers, list) or not servers or not all(
            isinstance(s, str) and s.startswith(("nats://", "tls://", "ws://", "wss://")) for s in servers):
        raise bad("[nats] servers", "expected a list of nats://HOST:PORT (or tls://) URLs")
    stream = _string(table.get("stream", d.stream), "[nats] stream", bad)
    if not _STREAM_NAME.fullmatch(stream):
        raise bad("[nats] stream", f"{stream!r} must be 1-64 of A-Z a-z 0-9 _ -")
    create = table.get("create_stream", d.create_stream)
    if not isinstance(create, bool):
        raise bad("[nats] create_stream", "expected true or false")
    credentials = table.get("credentials")
    if credentials is not None:
        credentials = _string(credentials, "[nats] credentials", bad)
    return NatsSettings(
        servers=tuple(servers), stream=stream, create_stream=create,
        replicas=int(_number(table.get("replicas", d.replicas), "[nats] replicas", bad, 1, 5, integer=True)),
        duplicate_window=_number(table.get("duplicate_window", d.duplicate_window),
                                 "[nats] duplicate_window", bad, 1, 7 * 86400),
        credentials=credentials,
        connect_timeout=_number(table.get("connect_timeout", d.connect_timeout), "[nats] connect_timeout",
                                bad, 0.1, 60),
        reconnect_wait=_number(table.get("reconnect_wait", d.reconnect_wait), "[nats] reconnect_wait",
                               bad, 0.05, 60),
    )


def _kafka(table: Mapping[str, object], bad) -> dict[str, str]:
    """librdkafka's own settings, as strings; librdkafka checks names and values itself."""
    out: dict[str, str] = {}
    for key, value in table.items():
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, int | float | str):
            out[key] = str(value)
        else:
            raise bad(f"[kafka] {key}", "expected a string, number or boolean")
    return out


def _zmq(table: Mapping[str, object], bad) -> ZmqSettings:
    _no_unknown(table, _ZMQ_KEYS, "[zmq]", bad)
    d = ZmqSettings()
    endpoint = _string(table.get("endpoint", d.endpoint), "[zmq] endpoint", bad)
    if "://" not in endpoint:
        raise bad("[zmq] endpoint", f"{endpoint!r} is not a ZeroMQ endpoint (tcp://HOST:PORT, ipc://PATH)")
    try:
        mode = ZmqMode(table.get("mode", d.mode.value))
    except ValueError:
        raise bad("[zmq] mode", "expected \"bind\" or \"connect\"") from None
    hwm = int(_number(table.get("send_hwm", d.send_hwm), "[zmq] send_hwm", bad, 1, 10_000_000, integer=True))
    return ZmqSettings(endpoint=endpoint, mode=mode, send_hwm=hwm)


def _table(doc: Mapping[str, object], key: str, bad) -> Mapping[str, object]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise bad(key, "expected a table")
    return value


def _no_unknown(table: Mapping[str, object], known: set[str], where: str, bad) -> None:
    for key in table:
        if key not in known:
            raise bad(where, f"unknown key {key!r} (known: {', '.join(sorted(known))})")


def _string(value: object, where: str, bad) -> str:
    if not isinstance(value, str):
        raise bad(where, "expected a string")
    return value


def _number(value: object, where: str, bad, low: float, high: float, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise bad(where, f"expected {'an integer' if integer else 'a number'} in {low:g}..{high:g}")
    if not low <= value <= high:
        raise bad(where, f"{value} is outside {low:g}..{high:g}")
    return float(value)
