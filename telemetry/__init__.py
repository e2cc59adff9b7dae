"""Telemetry probe library: build Version 4 records and hand them to telemprobd.

    from telemetry import create_record, send
    ack = send(create_record("org.example/demo/hello", severity=1, payload="hi"))

`send` raises `SendError` (`NotOptedIn`, `DaemonUnavailable`, `RecordRejected`) unless the
daemon kept the record; the returned `Ack` carries the record id it was queued under.

The names below are imported on first use, not by `import telemetry`: every program
imports this package on its way to a submodule, and few need all of them (the daemons,
for one, never use the client).
"""

from __future__ import annotations

import importlib

from .version import __version__

# typing.TYPE_CHECKING, without importing typing: the modules every probe and daemon loads
# use typing's names in annotations only, and typing would cost each probe's run 1.5 ms and
# each daemon half a MiB (bench/probe_startup.py).  mypy and ruff read any TYPE_CHECKING.
TYPE_CHECKING = False

# Each public name but __version__, and the submodule that defines it.  Keep it, __all__
# and the imports for type checkers at the end in step (tests/integration/test_client.py).
_EXPORTS = {
    "Ack": "ack",
    "AckStatus": "ack",
    "Client": "client",
    "DaemonUnavailable": "client",
    "NotOptedIn": "client",
    "RecordRejected": "client",
    "SendError": "client",
    "send": "client",
    "Config": "config",
    "ConfigError": "config",
    "TelemetryError": "errors",
    "Mode": "paths",
    "Paths": "paths",
    "PayloadTooLarge": "record",
    "Record": "record",
    "RecordError": "record",
    "create_record": "record",
    "new_event_id": "record",
    "FramingError": "wire",
    "decode_frame": "wire",
    "encode_frame": "wire",
}

__all__ = [
    "Ack",
    "AckStatus",
    "Client",
    "Config",
    "ConfigError",
    "DaemonUnavailable",
    "FramingError",
    "Mode",
    "NotOptedIn",
    "Paths",
    "PayloadTooLarge",
    "Record",
    "RecordError",
    "RecordRejected",
    "SendError",
    "TelemetryError",
    "__version__",
    "create_record",
    "decode_frame",
    "encode_frame",
    "new_event_id",
    "send",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from .ack import Ack, AckStatus
    from .client import Client, DaemonUnavailable, NotOptedIn, RecordRejected, SendError, send
    from .config import Config, ConfigError
    from .errors import TelemetryError
    from .paths import Mode, Paths
    from .record import PayloadTooLarge, Record, RecordError, create_record, new_event_id
    from .wire import FramingError, decode_frame, encode_frame
