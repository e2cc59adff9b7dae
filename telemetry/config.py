"""telemetrics.conf: the key table, the original's INI dialect, and loading.

`KEYS` is the single source of truth for every key: its type, default, range and what a
value outside the range becomes.  The loader, the shipped default file and the
telemetrics.conf(5) page are all generated from it.

Differences from the original, on purpose (spec/defects.md A1, A5): the file named by
`-f` is the one used by every program, daemons included; every value is validated when
the file is loaded, so a typo is a `ConfigError` naming file, line, key and the accepted
range at start-up instead of a zero, a late exit or an `exit(1)` inside a probe.

What the original ignores silently we ignore too, but say so (`Config.notices`, logged
by every program that reads the file and listed by `telemctl status`): a key we do not
know (an obsolete one from a C client's file: systemd's "unknown key, ignoring"), a
section other than [settings] (a typo there would leave every setting at its default,
the upstream server included), a key given twice (the last wins, as in the original:
both lines are named), a value moved into its range.  Run as root, a file (or its
directory) that another user can change is refused: it decides where root's programs
send what they collect.
"""

from __future__ import annotations

import enum
import os
import re
import stat
from dataclasses import dataclass, fields

from .errors import TelemetryError
from .paths import Mode, Paths

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see telemetry/__init__.py)
if TYPE_CHECKING:
    import logging
    from typing import Any

SECTION = "settings"
INT64_MAX = 2**63 - 1
LONG_MAX = INT64_MAX


class ConfigError(TelemetryError):
    def __init__(self, message: str, path: str | None = None, line: int | None = None, key: str | None = None):
        where = path or "<config>"
        if line is not None:
            where += f":{line}"
        text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
        super().__init__(text)
        self.path, self.line, self.key = path, line, key


class NoticeKind(enum.Enum):
    UNKNOWN_KEY = "unknown-key"
    UNKNOWN_SECTION = "unknown-section"
    DUPLICATE_KEY = "duplicate-key"
    CLAMPED = "clamped"


@dataclass(frozen=True)
class Notice:
    """Something in the file that was ignored or changed; loading went on."""

    kind: NoticeKind
    path: str | None
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path or '<config>'}:{self.line}: {self.text}"


class Kind(enum.Enum):
    STRING = "string"
    INT = "integer"
    BOOL = "boolean"
    CHOICE = "choice"


class OutOfRange(enum.Enum):
    REJECT = "reject"  # a ConfigError
    CLAMP = "clamp"  # moved to the nearest bound, with a warning
    CLAMP_HIGH = "clamp-high"  # below the range is an error, above is clamped
    NEGATIVE_DISABLES = "negative-disables"  # any negative becomes -1 (off); above hi clamps


@dataclass(frozen=True)
class Key:
    """One setting: its name, kind, default and its line of documentation."""
    name: str
    kind: Kind
    default: Any  # a value, or the name of a Paths attribute for path keys
    doc: str
    readers: str
    unit: str = ""
    lo: int | None = None
    hi: int | None = None
    out_of_range: OutOfRange = OutOfRange.REJECT
    choices: tuple[str, ...] = ()
    original: bool = True  # False: a key the original does not have
    path_default: bool = False

    def default_for(self, paths: Paths) -> Any:
        return getattr(paths, self.default) if self.path_default else self.default

    def range_text(self) -> str:
        if self.kind is Kind.BOOL:
            return "true or false (or 1/0)"
        if self.kind is Kind.CHOICE:
            return "one of " + ", ".join(self.choices)
        if self.kind is Kind.INT:
            text = f"{self.lo}..{self.hi}"
            if self.out_of_range is OutOfRange.NEGATIVE_DISABLES:
                text = f"-1 (disabled) or 0..{self.hi}"
            return text + (f" {self.unit}" if self.unit else "")
        return "any text"


DEFAULT_SERVER = "https://clr.telemetry.intel.com/v2/collector"
DEFAULT_TID = "6907c830-eed9-4ce9-81ae-76daf8d88f0f"
DEFAULT_TIDHEADER = f"X-Telemetry-TID: {DEFAULT_TID}"

KEYS: tuple[Key, ...] = (
    Key("server", Kind.STRING, DEFAULT_SERVER, "URL records are POSTed to.", "telempostd"),
    Key("socket_path", Kind.STRING, "socket_path", "Unix stream socket telemprobd listens on and probes send to.",
        "telemprobd, probes", path_default=True),
    Key("spool_dir", Kind.STRING, "spool_dir", "Directory of the record queue (queue.db).",
        "telemprobd, telempostd", path_default=True),
    Key("cainfo", Kind.STRING, "", "CA bundle for verifying the collector's certificate; "
        "used when non-empty and the file exists.", "telempostd"),
    Key("tidheader", Kind.STRING, DEFAULT_TIDHEADER, "Telemetry id header line sent with every record "
        "(write the space as \\s).", "telempostd"),
    Key("rate_limit_strategy", Kind.CHOICE, "spool", "What happens to a record over a rate limit: "
        "'spool' keeps it for delivery when the window allows, 'drop' refuses it.", "telemprobd",
        choices=("spool", "drop")),
    Key("record_expiry", Kind.INT, 1200, "Age after which an undelivered record is removed "
        "(and journaled as expired).", "telempostd", unit="minutes", lo=0, hi=LONG_MAX // 60,
        out_of_range=OutOfRange.CLAMP_HIGH),
    Key("spool_max_size", Kind.INT, 5120, "Cap on the bytes of undelivered records; "
        "a new record that does not fit is refused (-1: no cap).", "telemprobd, telempostd", unit="KiB",
        lo=0, hi=LONG_MAX // 1024, out_of_range=OutOfRange.NEGATIVE_DISABLES),
    Key("spool_process_time", Kind.INT, 120, "First retry delay after a failed delivery, and the "
        "interval of the daemons' housekeeping.", "telemprobd, telempostd", unit="seconds",
        lo=120, hi=300, out_of_range=OutOfRange.CLAMP),
    Key("record_window_length", Kind.INT, 15, "Length of the record rate window.", "telemprobd",
        unit="minutes", lo=0, hi=59),
    Key("byte_window_length", Kind.INT, 20, "Length of the byte rate window.", "telemprobd",
        unit="minutes", lo=0, hi=59),
    Key("record_burst_limit", Kind.INT, 1000, "Records accepted per record window (-1: no limit).",
        "telemprobd", lo=0, hi=INT64_MAX, out_of_range=OutOfRange.NEGATIVE_DISABLES),
    Key("byte_burst_limit", Kind.INT, -1, "Bytes accepted per byte window, counted over the "
        "real record sizes (-1: no limit).", "telemprobd", unit="bytes", lo=0, hi=INT64_MAX,
        out_of_range=OutOfRange.NEGATIVE_DISABLES),
    Key("rate_limit_enabled", Kind.BOOL, True, "Master switch of the rate limits.", "telemprobd"),
    Key("daemon_recycling_enabled", Kind.BOOL, True, "Daemons started by systemd exit after "
        "daemon_idle_time without work; socket and path activation start them again.",
        "telemprobd, telempostd"),
    Key("record_retention_enabled", Kind.BOOL, False, "Keep local copies of the last 100 records' "
        "payloads for 'telemctl journal -i'.", "telempostd"),
    Key("record_server_delivery_enabled", Kind.BOOL, True, "false: nothing is posted; records are "
        "journaled (and retained if enabled) and removed from the queue.", "telempostd"),
    # Ours.
    Key("request_format", Kind.CHOICE, "headers", "Request generation: 'headers' sends each record "
        "header as an HTTP header with the payload as the body (the telemetrics-backend API); 'json' "
        "sends one JSON object with the headers as keys plus 'payload'.", "telempostd",
        choices=("headers", "json"), original=False),
    Key("tls_client_cert", Kind.STRING, "", "Client certificate (PEM) for mutual TLS.", "telempostd",
        original=False),
    Key("tls_client_key", Kind.STRING, "", "Private key (PEM) of tls_client_cert.", "telempostd",
        original=False),
    Key("max_in_flight", Kind.INT, 4, "Requests kept in flight at once on reused connections.",
        "telempostd", lo=1, hi=32, original=False),
    Key("connect_timeout", Kind.INT, 5, "Connect timeout of a POST.", "telempostd", unit="seconds",
        lo=1, hi=300, original=False),
    Key("request_timeout", Kind.INT, 10, "Total timeout of a POST.", "telempostd", unit="seconds",
        lo=1, hi=3600, original=False),
    Key("retry_max_delay", Kind.INT, 3600, "Longest wait between two delivery attempts of a record; "
        "also caps a collector's Retry-After.", "telempostd", unit="seconds", lo=1, hi=86400,
        original=False),
    Key("retry_probe_interval", Kind.INT, 30, "While delivery waits out a backoff after the collector "
        "failed, one record is sent this often to learn whether it answers again; when it does, "
        "everything waiting goes at once (0: wait out every backoff).", "telempostd", unit="seconds",
        lo=0, hi=86400, original=False),
    Key("rate_limit_uid_share", Kind.INT, 50, "Most of each rate limit, of max_connections and of "
        "spool_max_size one local user (uid) may take; the rest stays available to other users "
        "(100: no per-user cap).", "telemprobd",
        unit="percent", lo=1, hi=100, original=False),
    Key("reserved_classifications", Kind.STRING,
        "org.clearlinux/crash,org.clearlinux/kernel,org.clearlinux/journal,org.clearlinux/bert",
        "Classification prefixes (comma-separated) that only reserved_classification_uids, the account "
        "telemprobd runs as and the telemetry account may send: the system probes' own, so that no local "
        "user can send records that look like theirs (empty: none reserved).", "telemprobd", original=False),
    Key("reserved_classification_uids", Kind.STRING, "0", "Users (uids or names, comma-separated) who may "
        "send the reserved_classifications, besides the account telemprobd runs as and the telemetry "
        "account; the user who connected counts, not the one a privileged sender speaks for.",
        "telemprobd", original=False),
    Key("max_connections", Kind.INT, 64, "Client connections telemprobd serves at once.",
        "telemprobd", lo=1, hi=4096, original=False),
    Key("connection_timeout", Kind.INT, 10, "Time a client has to deliver its whole frame.",
        "telemprobd", unit="seconds", lo=1, hi=300, original=False),
    Key("sync_interval", Kind.INT, 1, "Longest time between telemprobd acknowledging a record and "
        "syncing it to disk. An acknowledged record is always committed to the queue's write-ahead log "
        "first, so the crash or kill of any process cannot lose it; a power cut can lose the records "
        "acknowledged in the last sync_interval (0: sync before every acknowledgement, one fsync per "
        "group commit). 1 s bounds that loss to what one second brings for the cost of one fsync a "
        "second, a fifth of the window ext4 itself leaves unsynced (its journal commits every 5 s).",
        "telemprobd", unit="seconds", lo=0, hi=3600, original=False),
    Key("sync_severity", Kind.INT, 3, "Records of this severity or higher (crash reports are 3 and 4) "
        "are synced to disk before they are acknowledged, whatever sync_interval says (5: none).",
        "telemprobd", lo=1, hi=5, original=False),
    Key("crash_max_core_size", Kind.INT, 2048, "Bytes of a core crashprobe reads at most.",
        "crashprobe", unit="MiB", lo=1, hi=1 << 20, original=False),
    Key("crash_time_limit", Kind.INT, 30, "Time crashprobe may spend on one crash.", "crashprobe",
        unit="seconds", lo=1, hi=600, original=False),
    Key("crash_flood_window", Kind.INT, 60, "One report per executable within this window.",
        "crashprobe", unit="seconds", lo=0, hi=86400, original=False),
    Key("crash_daily_cap", Kind.INT, 20, "Reports per executable per day.", "crashprobe",
        lo=1, hi=100000, original=False),
    Key("daemon_idle_time", Kind.INT, 300, "Time without work after which a daemon started by "
        "systemd exits, when daemon_recycling_enabled (300 s: the original's fixed time).",
        "telemprobd, telempostd", unit="seconds", lo=1, hi=86400, original=False),
    Key("metrics_textfile", Kind.STRING, "", "File the daemons rewrite with their counters in "
        "Prometheus' text format at most once a minute while they run (a node-exporter textfile "
        "collector's directory, name ending in .prom; empty: none). 'telemctl metrics' prints the same.",
        "telemprobd, telempostd", original=False),
    Key("log_level", Kind.CHOICE, "info", "Lowest level of log messages written.", "all programs",
        choices=("debug", "info", "warning", "error"), original=False),
)

KEY_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}

_KIND_TYPE = {Kind.STRING: str, Kind.INT: int, Kind.BOOL: bool, Kind.CHOICE: str}


@dataclass(frozen=True)
class Config:
    """Typed, validated settings; `source` is the file read (None: built-in).

    One attribute per entry of KEYS, in its order and of its kind's type (checked when the
    module is imported), spelled out so that type checkers know every setting."""

    server: str
    socket_path: str
    spool_dir: str
    cainfo: str
    tidheader: str
    rate_limit_strategy: str
    record_expiry: int
    spool_max_size: int
    spool_process_time: int
    record_window_length: int
    byte_window_length: int
    record_burst_limit: int
    byte_burst_limit: int
    rate_limit_enabled: bool
    daemon_recycling_enabled: bool
    record_retention_enabled: bool
    record_server_delivery_enabled: bool
    request_format: str
    tls_client_cert: str
    tls_client_key: str
    max_in_flight: int
    connect_timeout: int
    request_timeout: int
    retry_max_delay: int
    retry_probe_interval: int
    rate_limit_uid_share: int
    reserved_classifications: str
    reserved_classification_uids: str
    max_connections: int
    connection_timeout: int
    sync_interval: int
    sync_severity: int
    crash_max_core_size: int
    crash_time_limit: int
    crash_flood_window: int
    crash_daily_cap: int
    daemon_idle_time: int
    metrics_textfile: str
    log_level: str
    source: str | None = None
    notices: tuple[Notice, ...] = ()

    def log_notices(self, logger: logging.Logger) -> None:
        for notice in self.notices:
            logger.warning("%s", notice)


_NOT_KEYS = ("source", "notices")


def _check_config_matches_keys() -> None:
    declared = [(f.name, f.type) for f in fields(Config) if f.name not in _NOT_KEYS]
    wanted = [(k.name, _KIND_TYPE[k.kind].__name__) for k in KEYS]
    if declared != wanted:
        raise AssertionError(f"Config does not follow KEYS: {declared} != {wanted}")


_check_config_matches_keys()


# --- The original's INI dialect (src/nica/inifile.c) ---------------------------------

@dataclass(frozen=True)
class Entry:
    """A value of the file, with its line for the messages about it."""
    value: str
    line: int


def _unescape(value: str) -> str:
    out = []
    it = iter(value)
    for ch in it:
        if ch != "\\":
            out.append(ch)
            continue
        nxt = next(it, None)
        if nxt is None:
            break
        out.append(" " if nxt == "s" else nxt)
    return "".join(out)


@dataclass(frozen=True)
class Ini:
    """A parsed file: section -> key -> last entry; where each section was first opened;
    every (section, key, earlier line, later line) of a repeated key."""

    sections: dict[str, dict[str, Entry]]
    section_lines: dict[str, int]
    repeated: tuple[tuple[str, str, int, int], ...]


def read_ini(text: str, path: str | None = None) -> Ini:
    """The original's dialect: the last repeated key wins, repeated sections merge."""
    sections: dict[str, dict[str, Entry]] = {}
    section_lines: dict[str, int] = {}
    repeated: list[tuple[str, str, int, int]] = []
    current: dict[str, Entry] | None = None
    name = ""
    for n, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip(" \t\r")
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]"):
                raise ConfigError("Expected closing ']' for section", path, n)
            name = line[1:-1]
            current = sections.setdefault(name, {})
            section_lines.setdefault(name, n)
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise ConfigError("Expected key=value notation", path, n)
        key = key.strip(" \t")
        if not key:
            raise ConfigError("Encountered empty key", path, n)
        if current is None:
            raise ConfigError("Encountered key=value mapping without a valid section", path, n, key)
        if key in current:
            repeated.append((name, key, current[key].line, n))
        current[key] = Entry(_unescape(value.strip(" \t")), n)
    return Ini(sections, section_lines, tuple(repeated))


def parse_ini(text: str, path: str | None = None) -> dict[str, dict[str, Entry]]:
    """Sections of key → (value, line); the last repeated key wins, sections merge."""
    return read_ini(text, path).sections


_INT = re.compile(r"[ \t]*[+-]?[0-9]+")


def _convert(key: Key, raw: str, path: str | None, line: int, notices: list[Notice]) -> Any:
    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{msg}; accepted: {key.range_text()}", path, line, key.name)

    if key.kind is Kind.STRING:
        return raw
    if key.kind is Kind.BOOL:
        low = raw.lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
        raise fail(f"{raw!r} is not a boolean")
    if key.kind is Kind.CHOICE:
        low = raw.lower()
        if low not in key.choices:
            raise fail(f"{raw!r} is not a known value")
        return low
    if not _INT.fullmatch(raw):
        raise fail(f"{raw!r} is not an integer")
    value = int(raw)
    if not -(2**63) <= value <= INT64_MAX:
        raise fail(f"{raw!r} overflows a 64-bit integer")
    assert key.lo is not None and key.hi is not None
    if key.out_of_range is OutOfRange.NEGATIVE_DISABLES and value < 0:
        return -1
    if key.lo <= value <= key.hi:
        return value
    if key.out_of_range is OutOfRange.REJECT or (
        key.out_of_range is OutOfRange.CLAMP_HIGH and value < key.lo
    ):
        raise fail(f"{value} is out of range")
    clamped = min(max(value, key.lo), key.hi)
    notices.append(Notice(NoticeKind.CLAMPED, path, line,
                          f"{key.name}={value} is out of range ({key.range_text()}); {clamped} is used"))
    return clamped


def config_from_text(text: str, paths: Paths, path: str | None = None) -> Config:
    ini = read_ini(text, path)
    notices: list[Notice] = []
    for name, line in sorted(ini.section_lines.items(), key=lambda item: item[1]):
        if name == SECTION:
            continue
        known = [k for k in ini.sections[name] if k in KEY_BY_NAME]
        lost = f"; its settings ({', '.join(known)}) are not applied" if known else ""
        notices.append(Notice(NoticeKind.UNKNOWN_SECTION, path, line,
                              f"unknown section [{name}] ignored: only [{SECTION}] is read{lost}"))
    for section, repeated, first, again in ini.repeated:
        if section == SECTION:
            notices.append(Notice(NoticeKind.DUPLICATE_KEY, path, again,
                                  f"{repeated}: also set at line {first}; the last value, this line's, is used"))
    values: dict[str, Any] = {}
    for name, entry in ini.sections.get(SECTION, {}).items():
        key = KEY_BY_NAME.get(name)
        if key is None:
            notices.append(Notice(NoticeKind.UNKNOWN_KEY, path, entry.line,
                                  f"{name}: unknown key, ignored (telemetrics.conf(5) lists the keys)"))
            continue
        values[name] = _convert(key, entry.value, path, entry.line, notices)
    for key in KEYS:
        values.setdefault(key.name, key.default_for(paths))
    notices.sort(key=lambda n: n.line)
    return Config(**values, source=path, notices=tuple(notices))


def defaults(paths: Paths) -> Config:
    return Config(**{k.name: k.default_for(paths) for k in KEYS}, source=None)


def check_config_path(path: str) -> None:
    """-f must name an absolute path to an existing regular file (as the original)."""
    if not os.path.isabs(path):
        raise ConfigError("configuration file path not valid: it must be absolute", path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"configuration file path not valid: {e.strerror}", path) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError("configuration file path not valid: not a regular file", path)


def candidate_files(paths: Paths, explicit: str | None = None) -> list[str]:
    if explicit:
        return [explicit]
    if paths.mode is Mode.SYSTEM:
        return [paths.config_file, paths.defaults_file]
    return [paths.config_file]


CONFIG_MAX = 1 << 20  # bytes; a telemetrics.conf is a few KiB


def _read_text(path: str) -> str:
    """A regular file of at most CONFIG_MAX bytes, opened without blocking (a FIFO in its
    place would hang every program that reads the config), as text mode reads it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("not a regular file", path)
        if os.geteuid() == 0:
            _refuse_if_others_can_change(path, st)
        data = f.read(CONFIG_MAX + 1)
    if len(data) > CONFIG_MAX:
        raise ConfigError(f"file is larger than {CONFIG_MAX} bytes", path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("file is not valid UTF-8", path) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # every CR LF and lone CR ends a line


def changeable_by(st: os.stat_result, *, directory: bool = False) -> str | None:
    """Who other than root can change a file (or replace one in a directory), or None."""
    if st.st_uid != 0:
        return f"it belongs to uid {st.st_uid}"
    if directory and st.st_mode & stat.S_ISVTX:
        return None  # sticky: only the owner of a file may replace it, and ours is root's
    if st.st_mode & stat.S_IWOTH:
        return "every user can write to it"
    if st.st_mode & stat.S_IWGRP and st.st_gid != 0:
        return f"group {st.st_gid} can write to it"
    return None


def _refuse_if_others_can_change(path: str, st: os.stat_result) -> None:
    """Root's programs send what they collect where this file says: nobody else may edit it."""
    why = changeable_by(st)
    where = path
    if why is None:
        where = os.path.dirname(os.path.realpath(path))
        try:
            why = changeable_by(os.stat(where), directory=True)
        except OSError:
            why = None
    if why is not None:
        raise ConfigError(
            f"refused: {why}" + ("" if where == path else f" ({where})")
            + "; run as root, only a file no other user can change is read (chown root, chmod go-w)",
            path)


def plaintext_warning(cfg: Config) -> str | None:
    """One line when records would cross the network unencrypted: an http:// server that
    is not this machine."""
    if not cfg.server[:7].lower() == "http://":
        return None
    try:
        host, loopback = _plain_host(cfg.server)
    except ValueError:
        return None
    if loopback or host == "localhost" or host.endswith(".localhost"):
        return None
    return (f"server={cfg.server}: records are sent to {host} unencrypted (http://); "
            "use an https:// URL for a collector on another machine")


def _plain_host(url: str) -> tuple[str, bool]:
    """The host of an http:// URL as urllib.parse.urlsplit(url).hostname gives it ("" for
    none), and whether it is a loopback address for ipaddress; ValueError where urlsplit
    raises it.  A URL of printable ASCII without brackets (a name or an IPv4 address, the
    usual) is read here: urllib.parse imports ipaddress, together half a MiB of the idle
    telempostd that a warning at start would keep.  Any other URL (an IPv6 literal) goes
    through them (tests/unit/test_config.py checks that both ways agree)."""
    netloc = url[7:]
    for delimiter in "/?#":
        netloc = netloc.partition(delimiter)[0]
    if not (url.isascii() and url.isprintable()) or " " in url or "[" in netloc or "]" in netloc:
        import ipaddress
        import urllib.parse

        host = urllib.parse.urlsplit(url).hostname or ""
        try:
            return host, ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host, False
    name, percent, zone = netloc.rpartition("@")[2].partition(":")[0].partition("%")
    return name.lower() + percent + zone, _is_ipv4_loopback(name + percent + zone)


def _is_ipv4_loopback(host: str) -> bool:
    """ipaddress.ip_address(host).is_loopback for a host without a colon (so no IPv6):
    127.0.0.0/8 written as ipaddress reads IPv4, four decimal octets of 0..255 without
    leading zeros."""
    octets = host.split(".")
    return len(octets) == 4 and octets[0] == "127" and all(
        octet.isdigit() and len(octet) <= 3 and (octet == "0" or octet[0] != "0") and int(octet) <= 255
        for octet in octets)


def load(paths: Paths | None = None, explicit: str | None = None) -> Config:
    """Exactly one file, as the original: -f, else the admin file, else the defaults file.

    A file that exists but cannot be read or parsed is an error, never a silent fallback.
    """
    paths = paths or Paths.detect()
    if explicit:
        check_config_path(explicit)
    for candidate in candidate_files(paths, explicit):
        if not candidate:
            continue
        try:
            text = _read_text(candidate)
        except FileNotFoundError:
            if explicit:
                raise ConfigError("configuration file not found", candidate) from None
            if os.path.lexists(candidate):
                raise ConfigError("symbolic link to a file that does not exist", candidate) from None
            continue
        except OSError as e:
            if not explicit and not os.path.lexists(candidate):
                continue
            raise ConfigError(f"cannot read: {e.strerror}", candidate) from None
        return config_from_text(text, paths, candidate)
    return defaults(paths)


def tid_header(cfg: Config) -> tuple[str, str]:
    """The tidheader line split into (name, value); it is a whole header line."""
    name, sep, value = cfg.tidheader.partition(":")
    if not sep or not name.strip():
        raise ConfigError("tidheader must be a header line 'Name: value'", cfg.source, key="tidheader")
    return name.strip(), value.strip()


__all__ = [
    "Config",
    "ConfigError",
    "KEYS",
    "KEY_BY_NAME",
    "Key",
    "Kind",
    "Notice",
    "NoticeKind",
    "OutOfRange",
    "check_config_path",
    "config_from_text",
    "defaults",
    "load",
    "parse_ini",
    "plaintext_warning",
    "read_ini",
    "tid_header",
]
