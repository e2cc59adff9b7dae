"""The collector as a client sees it: a real server process on 127.0.0.1, SQLite and PostgreSQL.

One server per store serves the whole module (starting one costs about a second); tests keep
apart by what they send (each test queries records by its own classification or machine id).
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
import uuid

import pytest
from collector_support import (
    TID,
    VALID,
    http_request,
    post_headers,
    post_json,
    record_fields,
    temporary_postgres,
)
from support import make_user_install

from telemetry import headers as H
from telemetry_collector.launch import start_collector

SECOND_TID = "0b7e1c9e-2f3a-4c5d-8e9f-0a1b2c3d4e5f"
MAX_BODY = 4096


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request, tmp_path_factory):
    inst = make_user_install(tmp_path_factory.mktemp("coll"))
    log = str(inst.root / "collector.log")
    args = ["--tid", TID, "--tid", SECOND_TID, "--max-body", str(MAX_BODY), "--log-level", "debug"]
    if request.param == "sqlite":
        with start_collector(f"sqlite:///{inst.root}/records.db", env=inst.env, log_path=log, args=args) as c:
            yield c
    else:
        with temporary_postgres() as pg, start_collector(pg.create_database(), env=inst.env, log_path=log,
                                                          args=args) as c:
            yield c


@pytest.fixture
def collector(served, user_install):
    assert served.process.poll() is None, "the collector died"
    return served


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def records(collector, **params) -> list[dict]:
    query = urllib.parse.urlencode(params)
    answer = http_request(collector.url, "GET", f"/api/records?{query}", list(collector.auth_headers.items()))
    assert answer.status == 200, answer.body
    return answer.json()["records"]


def rejected(collector) -> dict[str, int]:
    return collector.stats()["rejected_by_rule"]


# --- every rule, both request generations ---------------------------------------------

RULES = [
    # (id, changes to the valid record, message of the 400)
    ("version-missing", {H.RECORD_FORMAT_VERSION: None}, "Record-Format-Version is invalid"),
    ("version-5", {H.RECORD_FORMAT_VERSION: "5"}, "Record-Format-Version is invalid"),
    ("version-superscript", {H.RECORD_FORMAT_VERSION: "\u00b2"}, "Record-Format-Version is invalid"),
    ("presence", {H.EVENT_ID: None}, "Record-Format-Version headers are invalid, Event-Id missing"),
    ("presence-v1-system-name", {H.RECORD_FORMAT_VERSION: "1", H.SYSTEM_NAME: None},
     "Record-Format-Version headers are invalid, System-Name missing"),
    ("severity", {H.SEVERITY: "5"}, "severity value is out of range"),
    ("classification", {H.CLASSIFICATION: "a/b"}, "Classification value is invalid"),
    ("machine-id", {H.MACHINE_ID: "m" * 33}, "Machine id value is invalid"),
    ("timestamp", {H.CREATION_TIMESTAMP: "-5"}, "timestamp is invalid"),
    ("timestamp-far-future", {H.CREATION_TIMESTAMP: "100000000000000000"}, "timestamp is invalid"),
    ("arch", {H.ARCH: "vax"}, "architecture is invalid"),
    ("host-type", {H.HOST_TYPE: "h" * 250}, "host type is invalid"),
    ("kernel-version", {H.KERNEL_VERSION: "6.1"}, "kernel version is invalid"),
    ("board-name", {H.BOARD_NAME: "caf\u00e9"}, "board name is invalid"),
    ("cpu-model", {H.CPU_MODEL: "c" * 200}, "cpu model is invalid"),
    ("bios-version", {H.BIOS_VERSION: "\u2122"}, "BIOS version is invalid"),
    ("event-id", {H.EVENT_ID: "E" * 32}, "Event id is invalid"),
    ("system-name", {H.SYSTEM_NAME: "s" * 250}, "system name is invalid"),
    ("build-clear", {H.BUILD: "12a"}, "Clear Linux OS build version has invalid characters"),
    ("build-other", {H.SYSTEM_NAME: "debian", H.BUILD: "12 3"}, "Build version has invalid characters"),
    ("build-long", {H.SYSTEM_NAME: "debian", H.BUILD: "b" * 200}, "Build version is too long"),
    ("pfv-range", {H.PAYLOAD_FORMAT_VERSION: "2147483647"}, "Payload format version outside of range supported"),
    ("pfv-text", {H.PAYLOAD_FORMAT_VERSION: "abc"},
     "Error parsing payload_format_version, invalid literal for int() with base 10: 'abc'"),
]

VALID_VARIANTS = [
    ("v1", {H.RECORD_FORMAT_VERSION: "1", H.BOARD_NAME: None, H.CPU_MODEL: None, H.BIOS_VERSION: None,
            H.EVENT_ID: None}),
    ("v2", {H.RECORD_FORMAT_VERSION: "2", H.BOARD_NAME: None, H.CPU_MODEL: None, H.BIOS_VERSION: None,
            H.EVENT_ID: None}),
    ("v3", {H.RECORD_FORMAT_VERSION: "3", H.EVENT_ID: None}),
    ("v4-leading-zero", {H.RECORD_FORMAT_VERSION: "04"}),
    ("severity-4", {H.SEVERITY: "4"}),
    ("classification-empty-parts", {H.CLASSIFICATION: "//"}),
    ("machine-id-empty", {H.MACHINE_ID: ""}),
    ("timestamp-zero", {H.CREATION_TIMESTAMP: "0"}),
    ("arch-ppc64le", {H.ARCH: "ppc64le"}),
    ("host-type-249", {H.HOST_TYPE: "h" * 249}),
    ("kernel-free-rest", {H.KERNEL_VERSION: "6.1.0-18-amd64"}),
    ("board-name-tab-199", {H.BOARD_NAME: "b\t" + "b" * 197}),
    ("build-quoted", {H.BUILD: "\"12\""}),
    ("build-other", {H.SYSTEM_NAME: "debian", H.BUILD: "12.04-beta_1"}),
    ("pfv-max", {H.PAYLOAD_FORMAT_VERSION: "2147483646"}),
]

GENERATIONS = {"headers": post_headers, "json": lambda url, fields, **kw: post_json(url, fields, "hello\n", **kw)}


@pytest.mark.parametrize("generation", sorted(GENERATIONS))
@pytest.mark.parametrize(("changes", "message"), [c[1:] for c in RULES], ids=[c[0] for c in RULES])
def test_invalid_value_is_refused_with_the_reference_message(collector, generation, changes, message):
    answer = GENERATIONS[generation](collector.url, record_fields(**changes))
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"message": message}


@pytest.mark.parametrize("generation", sorted(GENERATIONS))
@pytest.mark.parametrize("changes", [c[1] for c in VALID_VARIANTS], ids=[c[0] for c in VALID_VARIANTS])
def test_valid_value_is_stored(collector, generation, changes):
    machine = unique("m")
    fields = record_fields(**changes, **{H.MACHINE_ID: machine}) if H.MACHINE_ID not in changes else \
        record_fields(**changes)
    answer = GENERATIONS[generation](collector.url, fields)
    assert answer.status == 201, answer.body
    body = answer.json()
    assert body["classification"] == fields[H.CLASSIFICATION] and body["payload"] == "hello\n"
    assert body["record_version"] == int(fields[H.RECORD_FORMAT_VERSION])


@pytest.mark.parametrize("generation", sorted(GENERATIONS))
def test_tid(collector, generation):
    post = GENERATIONS[generation]
    for tid in (None, "wrong", TID.upper()):
        answer = post(collector.url, VALID, tid=tid)
        assert (answer.status, answer.json()) == (400, {"message": "Telemetry ID mismatch"})
    assert post(collector.url, VALID, tid=SECOND_TID).status == 201


def test_created_body_is_the_stored_row(collector):
    machine = unique("m")
    fields = record_fields(**{H.MACHINE_ID: machine, H.SYSTEM_NAME: "\"clear-linux-os\""})
    answer = post_headers(collector.url, fields, "caf\u00e9\n".encode(), extra=[("X-CLR-External", "true")])
    assert answer.status == 201 and answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert list(body) == sorted(body) == [
        "arch", "bios_version", "board_name", "build", "classification", "cpu_model", "event_id", "external",
        "id", "kernel_version", "machine_id", "machine_type", "payload", "record_version", "severity",
        "ts_capture", "ts_reception"]
    assert isinstance(body["id"], int) and body["severity"] == 1 and body["record_version"] == 4
    assert body["external"] is True and body["payload"] == "caf\u00e9\n"
    assert body["ts_capture"] == "2019-03-31 02:40:00 UTC"
    assert body["ts_reception"].endswith(" UTC") and len(body["ts_reception"]) == 23
    assert body["machine_type"] == VALID[H.HOST_TYPE] and body["machine_id"] == machine
    [stored] = records(collector, machine_id=machine)
    assert stored == body


def test_version_3_fields_not_carried_are_na(collector):
    machine = unique("m")
    fields = record_fields(**{H.RECORD_FORMAT_VERSION: "2", H.EVENT_ID: None, H.BOARD_NAME: None,
                              H.MACHINE_ID: machine})
    body = post_headers(collector.url, fields).json()
    assert (body["board_name"], body["cpu_model"], body["bios_version"], body["event_id"]) == ("N/A",) * 4


def test_header_names_in_any_case_and_with_underscores(collector):
    machine = unique("m")
    fields = record_fields(**{H.MACHINE_ID: machine})
    headers = [(name, fields[name]) for name in H.RECORD_HEADERS]  # record_format_version: 4, ...
    headers += [("x-telemetry-tid", TID), ("Content-Type", "application/text")]
    answer = http_request(collector.url, "POST", "/", headers, b"underscored")
    assert answer.status == 201, answer.body
    assert records(collector, machine_id=machine)[0]["payload"] == "underscored"


def test_repeated_header_is_refused(collector):
    answer = post_headers(collector.url, VALID, extra=[("Severity", "2")])
    assert (answer.status, answer.message) == (400, "Severity header is repeated; send it once")


def test_surrounding_whitespace_is_stripped(collector):
    assert post_headers(collector.url, record_fields(**{H.SEVERITY: "  4"})).json()["severity"] == 4


# --- de-duplication ---------------------------------------------------------------------

@pytest.mark.parametrize("generation", sorted(GENERATIONS))
def test_repeated_record_id_answers_the_stored_row_and_stores_nothing(collector, generation):
    post = GENERATIONS[generation]
    machine, record_id = unique("m"), uuid.uuid4().hex
    fields = record_fields(**{H.MACHINE_ID: machine})
    before = collector.stats()
    first = post(collector.url, fields, record_id=record_id)
    again = post(collector.url, fields, record_id=record_id)
    third = post_headers(collector.url, fields, b"different", record_id=record_id)
    assert first.status == 201 and again.status == 200 and third.status == 200
    assert again.json() == first.json() == third.json()
    assert len(records(collector, machine_id=machine)) == 1
    after = collector.stats()
    assert after["duplicates"] - before["duplicates"] == 2
    assert after["stored"] - before["stored"] == 1


def test_records_without_record_id_are_never_merged(collector):
    machine = unique("m")
    for _ in range(2):
        assert post_headers(collector.url, record_fields(**{H.MACHINE_ID: machine})).status == 201
    assert len(records(collector, machine_id=machine)) == 2


def test_bad_record_id_is_refused(collector):
    answer = post_headers(collector.url, VALID, record_id="not an id")
    assert (answer.status, answer.message) == (400, "X-Telemetry-Record-Id is invalid")


def test_concurrent_posts_are_all_stored_once(collector):
    machine = unique("m")
    ids: list[int] = []
    errors: list[str] = []

    def client(n: int) -> None:
        for i in range(25):
            answer = post_headers(collector.url, record_fields(**{H.MACHINE_ID: machine}), b"c",
                                  record_id=f"{machine}-{n}-{i}")
            if answer.status != 201:
                errors.append(answer.body.decode())
            else:
                ids.append(answer.json()["id"])
            # a retry racing nothing: must be answered from the stored row
            if post_headers(collector.url, VALID, record_id=f"{machine}-{n}-{i}").status != 200:
                errors.append("retry not 200")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(ids) == len(set(ids)) == 200
    assert len(records(collector, machine_id=machine)) == 200


# --- bodies -----------------------------------------------------------------------------

def _stored_payload(collector, answer) -> str:
    assert answer.status == 201, answer.body
    return answer.json()["payload"]


def test_payload_encodings(collector):
    assert _stored_payload(collector, post_headers(collector.url, VALID, "h\u00e9llo".encode())) == "h\u00e9llo"
    assert _stored_payload(collector, post_headers(collector.url, VALID, b"\xff\xfe")) == "\u00ff\u00fe"
    assert _stored_payload(collector, post_headers(collector.url, VALID, b"")) == ""
    assert _stored_payload(collector, post_headers(collector.url, VALID, b"", content_type=None)) == ""


def test_chunked_body_is_read_in_full(collector):
    """The reference (uWSGI) stored a chunked body empty with a 201 (§11.6)."""
    from collector_support import header_list

    answer = http_request(collector.url, "POST", "/v2/collector", header_list(VALID), chunks=[b"one ", b"two"])
    assert _stored_payload(collector, answer) == "one two"


def test_form_body_is_kept(collector):
    answer = post_headers(collector.url, VALID, b"a=1&b=%20", content_type="application/x-www-form-urlencoded")
    assert _stored_payload(collector, answer) == "a=1&b=%20"


def test_multipart_body_is_refused(collector):
    answer = post_headers(collector.url, VALID, b"--x\r\n\r\n--x--", content_type="multipart/form-data; boundary=x")
    assert answer.status == 415 and "multipart/form-data" in answer.message


def test_nul_in_payload_is_a_400(collector):
    answer = post_headers(collector.url, VALID, b"a\0b")
    assert (answer.status, answer.message) == (400, "payload contains a NUL byte")


def test_body_over_the_limit_is_413(collector):
    before = rejected(collector).get("too_large", 0)
    answer = post_headers(collector.url, VALID, b"x" * (MAX_BODY + 1))
    assert answer.status == 413 and str(MAX_BODY) in answer.message
    from collector_support import header_list

    chunked = http_request(collector.url, "POST", "/v2/collector", header_list(VALID),
                           chunks=[b"x" * 1000] * 5)
    assert chunked.status == 413
    assert post_headers(collector.url, VALID, b"x" * MAX_BODY).status == 201
    assert rejected(collector)["too_large"] - before == 2


def test_json_body_problems_are_400(collector):
    headers = [(H.TID_HEADER, TID), ("Content-Type", "application/json")]
    for body, start in ((b"{", "JSON body is invalid"), (b"[]", "JSON body must be an object"),
                        (json.dumps({**VALID, "severity": 1.5}).encode(), "JSON body: severity must be a string")):
        answer = http_request(collector.url, "POST", "/v2/collector", headers, body)
        assert answer.status == 400 and answer.message.startswith(start)


# --- routes -----------------------------------------------------------------------------

def test_routes(collector):
    for path in ("/", "/v2/collector"):
        answer = http_request(collector.url, "GET", path)
        assert answer.status == 302 and answer.headers["location"] == "/telemetryui"
        for method in ("PUT", "DELETE", "PATCH"):
            answer = http_request(collector.url, method, path, body=b"")
            assert answer.status == 405 and "POST" in answer.headers["allow"]
    index = http_request(collector.url, "GET", "/telemetryui")  # the web views' index: a reader's
    assert index.status == 401 and index.headers["content-type"].startswith("text/html")
    index = http_request(collector.url, "GET", "/telemetryui", [("Authorization", f"Bearer {collector.token}")])
    assert index.status == 200 and b'href="/telemetryui/records"' in index.body
    assert http_request(collector.url, "POST", "/api/records", body=b"").status == 405
    missing = http_request(collector.url, "GET", "/v3/collector")
    assert missing.status == 404 and missing.json()["message"].startswith("Not found")
    assert http_request(collector.url, "POST", "/v2/collector/", body=b"").status == 404


# --- GET /api/records -----------------------------------------------------------------------

def test_records_query(collector):
    cls = f"org.test/{unique()}/q"
    for severity, build in ((1, "100"), (2, "100"), (2, "200"), (3, "200")):
        fields = record_fields(**{H.CLASSIFICATION: cls, H.SEVERITY: str(severity), H.BUILD: build,
                                  H.CREATION_TIMESTAMP: str(1_000_000 + severity)})
        assert post_headers(collector.url, fields).status == 201
    everything = records(collector, classification=cls)
    assert [r["severity"] for r in everything] == [3, 2, 2, 1]  # highest id first
    assert len(records(collector, classification=cls, severity=2)) == 2
    assert len(records(collector, classification=cls, build="200")) == 2
    assert len(records(collector, classification=cls, build="'200'")) == 2
    assert len(records(collector, classification=cls, limit=2)) == 2
    assert len(records(collector, classification=cls, from_id=everything[1]["id"])) == 2
    assert len(records(collector, classification=cls, ts_capture=1_000_002)) == 1
    assert len(records(collector, classification=cls, created_in_sec=3600)) == 4
    assert len(records(collector, classification=cls, created_in_days=1)) == 4
    assert records(collector, classification=cls, created_in_days=0) == []
    assert records(collector, classification="no/such/thing") == []


@pytest.mark.parametrize(("query", "message"), [
    ("severity=9", "Severity should be a numeric value"),
    ("classification=a/b", "Classification value is invalid"),
    ("build=" + "b" * 200, "Build value is invalid"),
    ("machine_id=" + "m" * 33, "Machine id value is invalid"),
    ("created_in_days=x", "Created (in days) value is invalid"),
    ("created_in_sec=-1", "Created (in seconds) value is invalid"),
    ("from_id=x", "Provided record id value is invalid"),
    ("ts_capture=x", "Time stamp from record capture"),
    ("limit=1001", "Record limit value is invalid"),
    ("before_id=x", "Cursor (before_id) value is invalid"),
])
def test_records_query_refusals(collector, query, message):
    answer = http_request(collector.url, "GET", f"/api/records?{query}", list(collector.auth_headers.items()))
    assert (answer.status, answer.json()) == (400, {"message": message})


# --- hostile peers --------------------------------------------------------------------------

def _raw_exchange(url: str, data: bytes) -> bytes:
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return out


def test_garbage_and_oversized_heads_do_not_stop_the_server(collector):
    assert _raw_exchange(collector.url, b"\x00\x01\x02 nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")
    head = b"POST /v2/collector HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"a" * 200_000 + b"\r\n\r\n"
    answer = _raw_exchange(collector.url, head)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 4")
    assert post_headers(collector.url, VALID).status == 201


def test_stats_count_every_outcome(collector):
    before = collector.stats()
    post_headers(collector.url, record_fields(**{H.ARCH: "vax"}))
    post_headers(collector.url, VALID, tid="nope")
    post_headers(collector.url, VALID)
    after = collector.stats()
    assert after["rejected_by_rule"]["arch"] - before["rejected_by_rule"].get("arch", 0) == 1
    assert after["rejected_by_rule"]["tid"] - before["rejected_by_rule"].get("tid", 0) == 1
    assert after["rejected"] - before["rejected"] == 2
    assert after["stored"] - before["stored"] == 1 and after["records"] - before["records"] == 1
