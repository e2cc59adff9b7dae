"""Reading a POST into a Submission: both request generations, header spelling, body rules."""

from __future__ import annotations

import json

from collector_support import TID, VALID
from hypothesis import given
from hypothesis import strategies as st

from telemetry import headers as H
from telemetry_collector.request import decode_text, media_type, submission_from_request
from telemetry_collector.rules import Rule


def raw(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """As an ASGI server hands them: names in lower case, values as bytes."""
    return [(n.lower().encode("latin-1"), v.encode("utf-8")) for n, v in pairs]


def header_pairs(fields: dict[str, str], content_type: str = "application/text") -> list[tuple[str, str]]:
    return [(H.HTTP_HEADERS[k], v) for k, v in fields.items()] + [
        (H.TID_HEADER, TID), ("Content-Type", content_type)]


def json_request(doc: object, headers: list[tuple[str, str]] | None = None) -> tuple[list, bytes]:
    pairs = [(H.TID_HEADER, TID), ("Content-Type", "application/json")] + (headers or [])
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return raw(pairs), body


def test_headers_generation_reads_fields_and_body():
    s = submission_from_request(raw(header_pairs(VALID) + [("X-CLR-External", "true"),
                                                          (H.RECORD_ID_HEADER, "abc")]), b"hello\n")
    assert dict(s.fields) == VALID and s.payload == "hello\n"
    assert (s.tid, s.external, s.record_id, s.defect) == (TID, "true", "abc", None)


def test_header_names_ignore_case_and_underscores():
    pairs = [(name.replace("-", "_").upper(), VALID[k]) for k, name in H.HTTP_HEADERS.items()]
    pairs += [("x_telemetry_tid", TID)]
    s = submission_from_request([(n.encode(), v.encode()) for n, v in pairs], b"")
    assert dict(s.fields) == VALID and s.tid == TID


def test_surrounding_whitespace_is_stripped():
    s = submission_from_request(raw([("Severity", "  4\t"), (H.TID_HEADER, f" {TID} ")]), b"")
    assert s.fields[H.SEVERITY] == "4" and s.tid == TID


def test_repeated_header_is_a_defect_and_joined():
    s = submission_from_request(raw(header_pairs(VALID) + [("severity", "2")]), b"")
    assert s.defect is not None and s.defect.rule is Rule.MALFORMED
    assert s.defect.message == "Severity header is repeated; send it once"
    s = submission_from_request(raw(header_pairs(VALID) + [("Record_Format_Version", "4")]), b"")
    assert s.defect.message == "Record-Format-Version header is repeated; send it once"
    s = submission_from_request(raw(header_pairs(VALID) + [(H.TID_HEADER, TID)]), b"")
    assert s.tid == f"{TID}, {TID}"


def test_unrelated_headers_are_ignored():
    s = submission_from_request(raw(header_pairs(VALID) + [("User-Agent", "x"), ("Accept", "*/*")]), b"")
    assert dict(s.fields) == VALID and s.defect is None


def test_body_is_utf8_else_latin1():
    assert decode_text("h\u00e9".encode()) == "h\u00e9"
    assert decode_text(b"\xff\xfe") == "\u00ff\u00fe"
    s = submission_from_request(raw(header_pairs(VALID)), b"caf\xe9")
    assert s.payload == "caf\u00e9"


def test_media_type():
    assert media_type("Application/JSON; charset=utf-8") == "application/json"
    assert media_type(None) == ""


def test_form_body_is_kept_as_sent():
    """The reference stored form bodies empty (§11.6); here the raw body is the payload."""
    s = submission_from_request(raw(header_pairs(VALID, "application/x-www-form-urlencoded")), b"a=1&b=2")
    assert s.payload == "a=1&b=2" and s.defect is None


def test_multipart_body_is_refused_with_415():
    s = submission_from_request(raw(header_pairs(VALID, "multipart/form-data; boundary=x")), b"--x--")
    assert s.defect is not None and (s.defect.rule, s.defect.status) == (Rule.MEDIA_TYPE, 415)


def test_json_generation():
    doc = {**VALID, "payload": "hello\n"}
    s = submission_from_request(*json_request(doc, [(H.RECORD_ID_HEADER, "r1"), ("X-CLR-External", "true")]))
    assert dict(s.fields) == VALID and s.payload == "hello\n"
    assert (s.tid, s.record_id, s.external, s.defect) == (TID, "r1", "true", None)


def test_json_with_record_headers_is_the_headers_generation():
    pairs = header_pairs(VALID, "application/json")
    s = submission_from_request(raw(pairs), b'{"payload": "x"}')
    assert dict(s.fields) == VALID and s.payload == '{"payload": "x"}'


def test_json_numbers_are_read_as_their_text_and_payload_may_be_absent():
    doc = {**VALID, H.SEVERITY: 2, H.RECORD_FORMAT_VERSION: 4}
    s = submission_from_request(*json_request(doc))
    assert s.fields[H.SEVERITY] == "2" and s.fields[H.RECORD_FORMAT_VERSION] == "4" and s.payload == ""


def test_json_values_are_stripped_like_headers_but_not_the_payload():
    s = submission_from_request(*json_request({**VALID, H.BUILD: " 12 ", "payload": "  p  "}))
    assert s.fields[H.BUILD] == "12" and s.payload == "  p  "


def test_json_with_raw_latin1_bytes():
    """The original's JSON writer sends bytes >= 0x80 unescaped."""
    body = json.dumps({**VALID, "payload": "PAYLOAD"}).encode().replace(b"PAYLOAD", b"caf\xe9")
    s = submission_from_request(*json_request(body))
    assert s.payload == "caf\u00e9" and s.defect is None


def _json_defect(body: bytes) -> str:
    s = submission_from_request(*json_request(body))
    assert s.defect is not None and s.defect.rule is Rule.MALFORMED and s.defect.status == 400
    return s.defect.message


def test_json_defects():
    assert _json_defect(b"{").startswith("JSON body is invalid: ")
    assert _json_defect(b"") .startswith("JSON body is invalid: ")
    assert _json_defect(b"[1]") == "JSON body must be an object of record fields and 'payload'"
    assert _json_defect(json.dumps({**VALID, H.SEVERITY: None}).encode()) == "JSON body: severity must be a string"
    assert _json_defect(json.dumps({**VALID, H.ARCH: ["x"]}).encode()) == "JSON body: arch must be a string"
    assert _json_defect(json.dumps({**VALID, H.SEVERITY: True}).encode()) == "JSON body: severity must be a string"
    assert _json_defect(b'{"severity": "1", "severity": "2"}') == "JSON body has the key 'severity' more than once"
    assert _json_defect(b"[" * 100000 + b"]" * 100000).startswith("JSON body is invalid")
    assert _json_defect(b'{"severity": 1' + b"0" * 5000 + b"}").startswith("JSON body is invalid")


def test_json_unknown_keys_are_ignored():
    s = submission_from_request(*json_request({**VALID, "extra": {"nested": 1}}))
    assert dict(s.fields) == VALID and s.defect is None


_value = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=30)


@given(st.dictionaries(st.sampled_from(H.RECORD_HEADERS), _value), _value)
def test_both_generations_read_the_same_record(fields, payload):
    """One record sent either way gives one Submission, so one verdict."""
    by_headers = submission_from_request(raw(header_pairs(fields)), payload.encode())
    by_json = submission_from_request(*json_request({**fields, "payload": payload}))
    assert dict(by_headers.fields) == dict(by_json.fields)
    assert by_headers.payload == by_json.payload
    assert by_headers.tid == by_json.tid and by_json.defect is None


@given(st.lists(st.tuples(st.binary(max_size=30), st.binary(max_size=60)), max_size=30), st.binary(max_size=200))
def test_any_request_is_read_without_error(pairs, body):
    for content_type in (b"application/json", b"application/text"):
        submission_from_request([*pairs, (b"content-type", content_type)], body)
