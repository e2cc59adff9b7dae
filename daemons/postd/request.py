"""A queued record as an HTTP request, in either of the original's two generations.

`headers` (the default; what telemetrics-backend accepts): every record field is an HTTP
header with the collector's Title-Case name, the payload is the body, Content-Type
`application/text`. `json`: one compact JSON object, the 15 field names as keys (all
values strings) plus `payload`, Content-Type `application/json`. Both carry the TID line
from `tidheader` and our record id header; values are taken whole from the typed record,
so nothing is cut at a space as the original's JSON builder did.

Pure: bytes and values in, header lines and a body out. pycurl takes the lines as they
are; two of its conventions are handled here: a header line with an empty (or blank) value
must be written `Name;` (`Name:` would remove the header), and `Expect:` switches off the
100-continue round trip curl otherwise adds to bodies over 1 KiB.
"""

from __future__ import annotations

import enum
import functools
import json
from dataclasses import dataclass

from telemetry import headers as H
from telemetry.contract import header_line, request_header_block
from telemetry.record import Record

CONTENT_TYPE_TEXT = "application/text"
CONTENT_TYPE_JSON = "application/json"
PAYLOAD_KEY = "payload"
_NO_EXPECT = b"Expect:"


class RequestFormat(enum.Enum):
    HEADERS = "headers"
    JSON = "json"


@dataclass(frozen=True)
class Request:
    """One POST ready for the transport: its header lines and body, built once."""
    headers: tuple[bytes, ...]
    body: bytes


def json_body(record: Record) -> bytes:
    doc: dict[str, str] = dict(record.headers())
    doc[PAYLOAD_KEY] = record.payload.decode("utf-8")
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@functools.lru_cache(maxsize=4)
def _fixed_lines(tid: tuple[str, str], content_type: str) -> tuple[bytes, bytes, bytes]:
    """The lines every request of a configuration carries: built once, not per record."""
    return header_line(*tid), _NO_EXPECT, header_line("Content-Type", content_type)


def _common(record_id: str, fmt: RequestFormat, tid: tuple[str, str]) -> tuple[bytes, ...]:
    tid_line, no_expect, content_type = _fixed_lines(
        tid, CONTENT_TYPE_JSON if fmt is RequestFormat.JSON else CONTENT_TYPE_TEXT)
    return tid_line, header_line(H.RECORD_ID_HEADER, record_id), no_expect, content_type


def build_request(record: Record, record_id: str, fmt: RequestFormat, tid: tuple[str, str]) -> Request:
    """`tid` is the (name, value) of the tidheader line."""
    common = _common(record_id, fmt, tid)
    if fmt is RequestFormat.JSON:
        return Request(common, json_body(record))
    return Request(tuple(request_header_block(record).split(b"\n")) + common, record.payload)


def prepared_request(lines: tuple[bytes, ...], payload: bytes, record_id: str, tid: tuple[str, str]) -> Request:
    """A `headers` request from the header lines telemprobd stored with the record."""
    return Request(lines + _common(record_id, RequestFormat.HEADERS, tid), payload)
