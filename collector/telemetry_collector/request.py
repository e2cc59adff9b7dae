"""From a POST's header list and body bytes to a `Submission` (pure; no I/O).

Two request generations arrive and are read into the same `Submission`, so one set of
rules judges both:

- headers: every record field is an HTTP header (``Record-Format-Version: 4``, …), the
  body is the payload.  Names are matched without regard to case, and ``_`` equals ``-``
  (``record_format_version`` is what the original sent before 2023).
- json: ``Content-Type: application/json`` and no ``Record-Format-Version`` header; the body
  is one object whose keys are the record's field names with string values, plus
  ``payload``.

The TID, ``X-CLR-External`` and ``X-Telemetry-Record-Id`` are headers in both.

Body rules (contract §7, without its §11.6 bug): the payload is the body as sent, decoded as
UTF-8 or else Latin-1.  A chunked body is read in full (the server de-chunks it), and a
``application/x-www-form-urlencoded`` body is kept as raw text like any other type;
``multipart/form-data`` is refused with 415, since its body is an envelope, not a payload.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from types import MappingProxyType

from telemetry import headers as H

from .rules import Rejected, Rule, Submission

JSON_MEDIA_TYPE = "application/json"
MULTIPART_MEDIA_TYPE = "multipart/form-data"
PAYLOAD_KEY = "payload"

_TID = H.TID_HEADER.lower()
_RECORD_ID = H.RECORD_ID_HEADER.lower()
_EXTERNAL = "x-clr-external"
_CONTENT_TYPE = "content-type"
_FIELD_BY_HEADER = {http.lower(): name for name, http in H.HTTP_HEADERS.items()}
_WANTED = frozenset(_FIELD_BY_HEADER) | {_TID, _RECORD_ID, _EXTERNAL, _CONTENT_TYPE}
_DISPLAY = {**{http.lower(): http for http in H.HTTP_HEADERS.values()},
            _TID: H.TID_HEADER, _RECORD_ID: H.RECORD_ID_HEADER, _EXTERNAL: "X-CLR-External",
            _CONTENT_TYPE: "Content-Type"}
_WHITESPACE = " \t"


def decode_text(data: bytes) -> str:
    """UTF-8 when it is, else Latin-1 (which takes every byte), as the reference stores text."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip(_WHITESPACE).lower()


# ASGI servers hand header names in lower case; both spellings map to one name.
_BY_RAW = {n.encode(): n for n in _WANTED} | {n.replace("-", "_").encode(): n for n in _WANTED}


def _normalise(name: bytes) -> str | None:
    found = _BY_RAW.get(name)
    if found is None:
        text = name.decode("latin-1").lower().replace("_", "-")
        found = text if text in _WANTED else None
    return found


def read_headers(raw: Iterable[tuple[bytes, bytes]]) -> tuple[dict[str, str], list[str]]:
    """The headers the collector reads, by normalised name, and those sent more than once."""
    seen: dict[str, str] = {}
    repeated: list[str] = []
    for raw_name, raw_value in raw:
        name = _normalise(raw_name)
        if name is None:
            continue
        value = decode_text(raw_value).strip(_WHITESPACE)
        if name in seen:
            if name not in repeated:
                repeated.append(name)
            seen[name] = f"{seen[name]}, {value}"
        else:
            seen[name] = value
    return seen, repeated


def submission_from_request(raw_headers: Iterable[tuple[bytes, bytes]], body: bytes) -> Submission:
    headers, repeated = read_headers(raw_headers)
    common = {
        "tid": headers.get(_TID),
        "external": headers.get(_EXTERNAL),
        "record_id": headers.get(_RECORD_ID),
    }
    defect = None
    if repeated:
        defect = Rejected(Rule.MALFORMED, f"{_DISPLAY[repeated[0]]} header is repeated; send it once")
    kind = media_type(headers.get(_CONTENT_TYPE))
    if kind == JSON_MEDIA_TYPE and H.HTTP_HEADERS[H.RECORD_FORMAT_VERSION].lower() not in headers:
        fields, payload, json_defect = _read_json(body)
        return Submission(fields=MappingProxyType(fields), payload=payload,
                          defect=defect or json_defect, **common)
    if kind == MULTIPART_MEDIA_TYPE and defect is None:
        defect = Rejected(
            Rule.MEDIA_TYPE,
            "multipart/form-data bodies are not accepted; send the payload as the raw body",
            status=415,
        )
    fields = {_FIELD_BY_HEADER[n]: v for n, v in headers.items() if n in _FIELD_BY_HEADER}
    return Submission(fields=MappingProxyType(fields), payload=decode_text(body), defect=defect, **common)


class _RepeatedKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _object_without_repeats(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj: dict[str, object] = {}
    for k, v in pairs:
        if k in obj:
            raise _RepeatedKey(k)
        obj[k] = v
    return obj


def _read_json(body: bytes) -> tuple[dict[str, str], str, Rejected | None]:
    def bad(message: str) -> tuple[dict[str, str], str, Rejected]:
        return {}, "", Rejected(Rule.MALFORMED, message)

    try:
        try:
            doc = json.loads(body, object_pairs_hook=_object_without_repeats)
        except UnicodeDecodeError:
            # The original's JSON writer sends bytes >= 0x80 raw; take them as Latin-1.
            doc = json.loads(body.decode("latin-1"), object_pairs_hook=_object_without_repeats)
    except _RepeatedKey as e:
        return bad(f"JSON body has the key {e.key[:40]!r} more than once")
    except json.JSONDecodeError as e:
        return bad(f"JSON body is invalid: {e.msg} at line {e.lineno} column {e.colno}")
    except (RecursionError, ValueError) as e:
        return bad(f"JSON body is invalid: {str(e)[:80]}")
    if not isinstance(doc, dict):
        return bad("JSON body must be an object of record fields and 'payload'")
    fields: dict[str, str] = {}
    for key in (*H.RECORD_HEADERS, PAYLOAD_KEY):
        if key not in doc:
            continue
        value = doc[key]
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return bad(f"JSON body: {key} must be a string")
        # Stripped like a header value, so both generations of one record get one verdict.
        fields[key] = value if key == PAYLOAD_KEY else value.strip(_WHITESPACE)
    payload = fields.pop(PAYLOAD_KEY, "")
    return fields, payload, None
