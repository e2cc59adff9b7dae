"""The JSON message every stream dispatcher sends (pure): schema version 1.

One UTF-8 JSON object per record, documented in docs/record-message.md (with a JSON
Schema beside it)::

    {"schema": 1,
     "record_id": "<the X-Telemetry-Record-Id, or one the collector made>",
     "received_at": <unix seconds, the collector's clock>,
     "headers": {"record_format_version": 4, "classification": "a/b/c", "severity": 2,
                 "machine_id": "...", "creation_timestamp": <unix seconds>, "arch": "...",
                 "host_type": "...", "build": "...", "kernel_version": "...",
                 "payload_format_version": 1, "system_name": "...", "board_name": "...",
                 "cpu_model": "...", "bios_version": "...", "event_id": "...",
                 "external": false},
     "payload": "<the body as text>"}

Every record field is present (``"N/A"`` for those its version does not carry); the keys
are the record's own field names.  The record id is also the message's identity where the
stream has one (NATS ``Nats-Msg-Id``, the Kafka key), so JetStream drops a repeat within
its duplicate window and consumers can drop the rest.  A new key may be added within a
version; a key's meaning never changes without a new ``schema`` number.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from telemetry import headers as H

from ..model import NewRecord

SCHEMA_VERSION = 1
SCHEMA_HEADER = "Telemetry-Schema"  # NATS and Kafka header carrying SCHEMA_VERSION
MSG_ID_HEADER = "Nats-Msg-Id"
DOMAIN_MAX = 64
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Message:
    key: str  # the record id
    channel: str  # NATS subject, Kafka topic, ZMQ topic frame
    body: bytes


def domain_of(classification: str) -> str:
    """The classification's first part, as one token a subject or topic name can hold."""
    domain = _NOT_IN_NAME.sub("_", classification.split("/", 1)[0][:DOMAIN_MAX])
    return domain or "_"


def channel_name(namespace: str, classification: str) -> str:
    """``namespace.domain``: a NATS subject of two tokens, a valid Kafka topic name."""
    return f"{namespace}.{domain_of(classification)}"


def fields_of(rec: NewRecord) -> dict[str, object]:
    return {
        H.RECORD_FORMAT_VERSION: rec.record_format_version,
        H.CLASSIFICATION: rec.classification,
        H.SEVERITY: rec.severity,
        H.MACHINE_ID: rec.machine_id,
        H.CREATION_TIMESTAMP: rec.ts_capture,
        H.ARCH: rec.arch,
        H.HOST_TYPE: rec.host_type,
        H.BUILD: rec.build,
        H.KERNEL_VERSION: rec.kernel_version,
        H.PAYLOAD_FORMAT_VERSION: rec.payload_format_version,
        H.SYSTEM_NAME: rec.system_name,
        H.BOARD_NAME: rec.board_name,
        H.CPU_MODEL: rec.cpu_model,
        H.BIOS_VERSION: rec.bios_version,
        H.EVENT_ID: rec.event_id,
        "external": rec.external,
    }


def build_message(rec: NewRecord, namespace: str) -> Message:
    """`rec` must carry its record id (the router gives one to every record)."""
    assert rec.record_id is not None
    doc = {
        "schema": SCHEMA_VERSION,
        "record_id": rec.record_id,
        "received_at": rec.ts_reception,
        "headers": fields_of(rec),
        "payload": rec.payload,
    }
    return Message(rec.record_id, channel_name(namespace, rec.classification), _ENCODER.encode(doc).encode())


class MessageError(ValueError):
    pass


def read_message(body: bytes) -> dict:
    """For consumers and tests: the object, checked to be schema 1 with every key."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MessageError(f"not a JSON message: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_VERSION:
        raise MessageError("not a schema 1 record message")
    missing = [k for k in ("record_id", "received_at", "headers", "payload") if k not in doc]
    missing += [k for k in (*H.RECORD_HEADERS, "external") if k not in doc.get("headers", {})]
    if missing:
        raise MessageError(f"message lacks {', '.join(missing)}")
    return doc
