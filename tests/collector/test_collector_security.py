"""The collector on a network, as an attacker and as an operator see it: read credentials,
the token commands, machine identity from client certificates, paged reads, and every
limit (slow and oversized requests, connection caps, rate limits).  Real collector
processes on 127.0.0.1 (other loopback addresses stand for other clients)."""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.parse
import uuid
from io import BytesIO

import httptools
import pycurl
import pytest
from collector_support import (
    VALID,
    Answer,
    Tricklers,
    header_list,
    http_request,
    make_pki,
    post_headers,
    record_fields,
)
from support import make_client_cert, wait_until

from telemetry import headers as H
from telemetry_collector.launch import make_token, start_collector

MODULE = "telemetry_collector.main"

# httptools 0.2 moved from http-parser to llhttp, which sets no limit of its own on a head.
LLHTTP = tuple(int(p) for p in httptools.__version__.split(".")[:2]) >= (0, 2)


def start(inst, *args: str, read_token: bool = True, name: str = "records"):
    return start_collector(f"sqlite:///{inst.root}/{name}.db", env=inst.env,
                           log_path=str(inst.root / f"{name}.log"), args=args, read_token=read_token)


def log_of(c) -> str:
    with open(c.log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def get(c, path: str, token: str | None = None, headers: list[tuple[str, str]] | None = None) -> Answer:
    sent = list(headers or [])
    if token is not None:
        sent.append(("Authorization", f"Bearer {token}"))
    return http_request(c.url, "GET", path, sent)


def database(c) -> str:
    return c.process.args[c.process.args.index("--database") + 1]


def token_cli(inst, c, *args: str):
    return inst.run(MODULE, "token", *args, "--database", database(c))


def refused(c) -> dict[str, int]:
    return c.stats()["refused"]


def machine_fields(machine: str) -> dict[str, str]:
    return record_fields(**{H.MACHINE_ID: machine})


# --- read credentials -------------------------------------------------------------------------

def test_reads_need_a_credential_and_the_right_scope(user_install):
    with start(user_install) as c:
        assert post_headers(c.url, VALID).status == 201  # ingestion stays open
        for path in ("/api/records", "/api/records/1", "/api/stats", "/api/tokens"):
            answer = get(c, path)
            assert answer.status == 401, path
            assert "Bearer" in answer.headers["www-authenticate"]
            assert "token add" in answer.message
        assert get(c, "/api/records", "tct_not-a-token").status == 401
        assert get(c, "/api/records", headers=[("Authorization", "Digest x")]).status == 401
        reader = make_token(database(c), "reader", scope="read", env=user_install.env)
        assert get(c, "/api/records", reader).status == 200
        assert get(c, "/api/stats", reader).status == 200
        forbidden = get(c, "/api/tokens", reader)
        assert forbidden.status == 403 and "admin" in forbidden.message
        listed = get(c, "/api/tokens", c.token)
        assert listed.status == 200
        assert {"reader", "read"} <= {v for cred in listed.json()["credentials"] for v in cred.values()}
        assert reader not in listed.body.decode()
        basic = base64.b64encode(f"anyone:{reader}".encode()).decode()
        assert get(c, "/api/records", headers=[("Authorization", f"Basic {basic}")]).status == 200
        assert c.process.poll() is None
        counts = refused(c)
        assert counts["unauthenticated"] == 6 and counts["forbidden"] == 1
        text = log_of(c)
        assert "refused unauthenticated from 127.0.0.1: GET /api/records" in text
        assert "refused forbidden from 127.0.0.1: GET /api/tokens" in text


def test_revoked_token_is_refused_on_the_next_request(user_install):
    with start(user_install) as c:
        reader = make_token(database(c), "soon-gone", scope="read", env=user_install.env)
        assert get(c, "/api/records", reader).status == 200
        done = token_cli(user_install, c, "revoke", "soon-gone")
        assert done.returncode == 0, done.stderr
        assert get(c, "/api/records", reader).status == 401
        # and over HTTP, by an admin
        other = make_token(database(c), "other", scope="read", env=user_install.env)
        answer = http_request(c.url, "DELETE", "/api/tokens/other", [("Authorization", f"Bearer {c.token}")])
        assert answer.status == 204
        assert get(c, "/api/records", other).status == 401
        assert http_request(c.url, "DELETE", "/api/tokens/other",
                            [("Authorization", f"Bearer {c.token}")]).status == 404


def test_first_run_hint_and_reads_turned_off(user_install):
    with start(user_install, read_token=False) as c:
        assert get(c, "/api/records").status == 401
    text = log_of(c)
    assert "no read credential exists yet" in text and "token add NAME --scope read" in text
    with start(user_install, "--no-reads", name="ingest-only") as c:
        assert post_headers(c.url, VALID).status == 201
        answer = get(c, "/api/records", c.token)
        assert answer.status == 404 and "turned off" in answer.message
        assert get(c, "/api/stats", c.token).status == 404


def test_token_commands(user_install):
    db = f"sqlite:///{user_install.root}/tokens.db"

    def run(*args: str):
        return user_install.run(MODULE, "token", *args, "--database", db)

    made = run("add", "alice", "--scope", "admin")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.decode().strip()
    assert secret.startswith("tct_") and len(secret.splitlines()) == 1
    assert b"only time" in made.stderr
    assert run("add", "cert reader", "--certificate").returncode == 0
    listed = run("list")
    assert listed.returncode == 0
    text = listed.stdout.decode()
    assert "alice" in text and "admin" in text and "cert reader" in text and "certificate" in text
    assert secret not in text
    as_json = json.loads(run("list", "--json").stdout)
    assert {(c["name"], c["kind"], c["scope"]) for c in as_json} == {
        ("alice", "token", "admin"), ("cert reader", "certificate", "read")}
    with open(user_install.root / "tokens.db", "rb") as f:
        assert secret.encode() not in f.read()  # stored hashed
    for args, expected in ((("add", "alice"), "a credential named 'alice' exists"),
                           (("add", " padded"), "not a usable name"),
                           (("add", "x", "--scope", "root"), "--scope"),
                           (("revoke", "nobody"), "no credential named 'nobody'")):
        done = run(*args)
        err = done.stderr.decode()
        assert done.returncode != 0 and expected in err and "Traceback" not in err, err
    assert run("revoke", "alice").returncode == 0
    assert "alice" not in run("list").stdout.decode()
    bad = user_install.run(MODULE, "token", "list", "--database", "mysql://x")
    assert bad.returncode != 0 and b"the scheme must be" in bad.stderr


# --- paged reads ---------------------------------------------------------------------------

def test_paging_with_the_cursor_reads_everything_once(user_install):
    with start(user_install) as c:
        machine = uuid.uuid4().hex
        ids = [post_headers(c.url, machine_fields(machine), f"record {i}".encode()).json()["id"] for i in range(7)]
        seen: list[int] = []
        cursor = None
        pages = 0
        while True:
            query = {"machine_id": machine, "limit": 3, **({"before_id": cursor} if cursor else {})}
            answer = get(c, "/api/records?" + urllib.parse.urlencode(query), c.token)
            assert answer.status == 200 and answer.headers["content-type"] == "application/json"
            page = answer.json()
            seen += [r["id"] for r in page["records"]]
            pages += 1
            cursor = page["next_before_id"]
            if cursor is None:
                assert "link" not in answer.headers
                break
            assert f"before_id={cursor}" in answer.headers["link"]
        assert seen == sorted(ids, reverse=True) and pages == 3
        one = get(c, f"/api/records/{ids[2]}", c.token)
        assert one.status == 200 and one.json()["payload"] == "record 2" and one.json()["id"] == ids[2]
        assert get(c, "/api/records/999999", c.token).status == 404
        bad = get(c, "/api/records/x1", c.token)
        assert (bad.status, bad.message) == (400, "Provided record id value is invalid")


# --- machine identity from client certificates -----------------------------------------------

def curl(url: str, path: str, *, cainfo: str, cert: str | None = None, key: str | None = None, headers: list[tuple[str, str]] | None = None,
         body: bytes | None = None) -> Answer:
    c = pycurl.Curl()
    out = BytesIO()
    try:
        c.setopt(pycurl.URL, url + path)
        c.setopt(pycurl.HTTPHEADER, [f"{n}: {v}".encode() for n, v in headers or []])
        if body is not None:
            c.setopt(pycurl.POSTFIELDS, body)
        c.setopt(pycurl.CAINFO, cainfo)
        if cert is not None:
            c.setopt(pycurl.SSLCERT, cert)
            c.setopt(pycurl.SSLKEY, key)
        c.setopt(pycurl.WRITEDATA, out)
        c.perform()
        return Answer(c.getinfo(pycurl.RESPONSE_CODE), {}, out.getvalue())
    finally:
        c.close()


def test_client_certificates_bind_machine_ids_and_readers(user_install):
    pki = make_pki(user_install.root)
    machine = "6a1f0e3c2b7d4e8f9a0b1c2d3e4f5a6b"
    m_cert, m_key = make_client_cert(pki, "machine", machine)
    r_cert, r_key = make_client_cert(pki, "reader", "dashboard")
    tls = ("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
           "--tls-client-ca", str(pki / "ca.pem"))
    with start(user_install, *tls) as c:
        ca = str(pki / "ca.pem")
        as_machine = {"cainfo": ca, "cert": str(m_cert), "key": str(m_key)}
        own = curl(c.url, "/v2/collector", **as_machine, headers=header_list(machine_fields(machine)), body=b"own")
        assert own.status == 201
        planted = curl(c.url, "/v2/collector", **as_machine,
                       headers=header_list(machine_fields("0" * 32)), body=b"planted")
        assert planted.status == 403
        assert "is not the identity of the client certificate" in json.loads(planted.body)["message"]
        assert f"CN={machine}" in json.loads(planted.body)["message"]
        # reads: a certificate is a reader only once registered
        as_reader = {"cainfo": ca, "cert": str(r_cert), "key": str(r_key)}
        assert curl(c.url, "/api/records", **as_reader).status == 401
        assert token_cli(user_install, c, "add", "dashboard", "--certificate").returncode == 0
        answer = curl(c.url, "/api/records", **as_reader)
        assert answer.status == 200
        payloads = [r["payload"] for r in json.loads(answer.body)["records"]]
        assert payloads == ["own"]  # nothing of the planted record was stored
        assert curl(c.url, "/api/records", **as_machine).status == 401  # a machine is no reader
        assert curl(c.url, "/api/records", **as_machine,
                    headers=[("Authorization", f"Bearer {c.token}")]).status == 200
        stats = json.loads(curl(c.url, "/api/stats", **as_reader).body)
        assert stats["rejected_by_rule"]["machine_identity"] == 1
        assert "rejected a record from 127.0.0.1: Machine-Id '00000000000000000000000000000000' is not" in log_of(c)


# --- slow clients --------------------------------------------------------------------------------

def test_trickling_connections_do_not_keep_others_out(user_install):
    """1,000 clients trickle request heads; a normal POST and GET are served while all of
    them are still connected, and the head deadline then closes every trickler with 408."""
    with start(user_install, "--head-timeout", "6") as c:
        tricklers = Tricklers(c.url, 1000, addresses=8)
        try:
            wait_until(lambda: min(tricklers.sent) >= 1, what="every trickler sending")
            t0 = time.monotonic()
            assert post_headers(c.url, VALID).status == 201
            assert get(c, "/api/records?limit=1", c.token).status == 200
            took = time.monotonic() - t0
            assert tricklers.still_open() == 1000, "a trickler was cut before the normal requests finished"
            print(f"normal POST and GET with 1000 tricklers connected: {took * 1000:.0f} ms")
            tricklers.stop()  # no byte may follow the server's 408 and close (it would be reset)
            wait_until(lambda: tricklers.still_open() == 0, timeout=60, what="the head deadline closing tricklers")
            answers = tricklers.answers()
            assert sum(a.startswith(b"HTTP/1.1 408") for a in answers) == 1000
        finally:
            tricklers.close()
        assert refused(c)["head_timeout"] == 1000
        assert post_headers(c.url, VALID).status == 201
        assert "refused head_timeout from 127.0.0." in log_of(c)


def raw(url: str, data: bytes, *, source: str = "127.0.0.1", timeout: float = 30) -> bytes:
    parts = urllib.parse.urlsplit(url)
    with socket.socket() as s:
        s.settimeout(timeout)
        s.bind((source, 0))
        s.connect((parts.hostname, parts.port))
        try:
            s.sendall(data)
        except OSError:
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
        return out


def test_oversized_heads_slow_bodies_and_garbage(user_install):
    with start(user_install, "--max-header-bytes", "4096", "--body-timeout", "1") as c:
        big = b"GET /api/records HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n"
        assert raw(c.url, big).startswith(b"HTTP/1.1 431 ")
        endless = b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"e" * 100_000
        # httptools before 0.2 (http-parser; Debian 12 has 0.1) refuses a head over 80 KiB
        # itself, as malformed, before the bound is counted
        assert raw(c.url, endless).startswith(b"HTTP/1.1 431 " if LLHTTP else b"HTTP/1.1 400 ")
        head = "".join(f"{n}: {v}\r\n" for n, v in header_list(VALID))
        slow = f"POST /v2/collector HTTP/1.1\r\nHost: x\r\n{head}Content-Length: 100\r\n\r\n".encode() + b"0" * 10
        assert raw(c.url, slow).startswith(b"HTTP/1.1 408 ")
        assert c.stats()["stored"] == 0  # nothing of the cut record
        assert raw(c.url, b"\x00\x01 nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        too_big = post_headers(c.url, VALID, b"x" * ((1 << 20) + 1))
        assert too_big.status == 413 and "at most 1048576 bytes" in too_big.message
        assert post_headers(c.url, VALID).status == 201
        counts = refused(c)
        too_large, malformed = (2, 1) if LLHTTP else (1, 2)
        assert counts["head_too_large"] == too_large and counts["body_timeout"] == 1
        assert counts["malformed_request"] == malformed
        assert c.stats()["rejected_by_rule"]["too_large"] == 1
        text = log_of(c)
        for reason in ("head_too_large", "body_timeout", "malformed_request"):
            assert f"refused {reason} from 127.0.0.1" in text
        assert "rejected a record from 127.0.0.1: Request body is 1048577 bytes" in text


def test_connection_caps(user_install):
    with start(user_install, "--max-connections-per-address", "4", "--max-connections", "8") as c:
        parts = urllib.parse.urlsplit(c.url)

        def connect(source: str) -> socket.socket:
            s = socket.create_connection((parts.hostname, parts.port), source_address=(source, 0), timeout=30)
            return s

        held = [connect("127.0.0.3") for _ in range(4)]
        try:
            wait_until(lambda: get(c, "/api/stats", c.token).status == 200, what="the stats")
            over = raw(c.url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", source="127.0.0.3")
            assert over.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in over.lower()
            assert post_headers(c.url, VALID).status == 201  # another address is served
            held += [connect("127.0.0.4") for _ in range(4)]
            wait_until(lambda: raw(c.url, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", source="127.0.0.5")
                       .startswith(b"HTTP/1.1 503 "), what="the total cap")
        finally:
            for s in held:
                s.close()
        wait_until(lambda: post_headers(c.url, VALID).status == 201, what="service after the holders left")
        counts = refused(c)
        assert counts["connections_per_address"] >= 1 and counts["connections_total"] >= 1
        assert "refused connections_per_address from 127.0.0.3" in log_of(c)


def test_a_reader_that_never_reads_is_dropped(user_install):
    with start(user_install, "--idle-timeout", "1") as c:
        machine = uuid.uuid4().hex
        for i in range(6):
            assert post_headers(c.url, machine_fields(machine), bytes([65 + i]) * (1 << 20)).status == 201
        parts = urllib.parse.urlsplit(c.url)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((parts.hostname, parts.port))
            s.sendall(f"GET /api/records?machine_id={machine} HTTP/1.1\r\nHost: x\r\n"
                      f"Authorization: Bearer {c.token}\r\n\r\n".encode())
            wait_until(lambda: refused(c).get("stalled_reader", 0) == 1, what="the stalled reader dropped")
        assert get(c, f"/api/records?machine_id={machine}", c.token).status == 200
        assert "refused stalled_reader from 127.0.0.1" in log_of(c)


# --- rate limits ----------------------------------------------------------------------------------

def test_rate_limits_answer_429_with_retry_after(user_install):
    with start(user_install, "--machine-rate", "0.01", "--machine-burst", "3", "--address-rate", "0.01",
               "--address-burst", "6") as c:
        busy = uuid.uuid4().hex
        statuses = [post_headers(c.url, machine_fields(busy)).status for _ in range(4)]
        assert statuses == [201, 201, 201, 429]
        limited = post_headers(c.url, machine_fields(busy))
        assert limited.status == 429 and int(limited.headers["retry-after"]) >= 1
        assert "Too many records from machine id" in limited.message
        assert post_headers(c.url, machine_fields(uuid.uuid4().hex)).status == 201  # another machine
        # every request took a token of the address's bucket (6), refused ones too: it is empty
        by_address = post_headers(c.url, machine_fields(uuid.uuid4().hex))
        assert by_address.status == 429 and "address 127.0.0.1" in by_address.message
        assert by_address.headers["retry-after"]
        assert c.stats()["rejected_by_rule"]["rate_limited"] == 3
        assert "rejected a record from 127.0.0.1: Too many records from" in log_of(c)


def test_telempostd_delivers_everything_through_the_rate_limit(user_install):
    pytest.importorskip("telemetry.daemons.postd.main", reason="telempostd is not installed")
    import os
    import signal
    import subprocess

    from support import METADATA

    from telemetry.daemons.store.queue import NewRecord, Queue, Sender
    from telemetry.record import create_record

    machine = uuid.uuid4().hex
    records = []
    for i in range(12):
        rec = create_record("org.test/ratelimit/x", 1, f"payload {i}\n", metadata=METADATA).with_machine_id(machine)
        records.append(NewRecord(record_id=uuid.uuid4().hex, received_at=time.time(),
                                 sender=Sender(os.getuid(), os.getgid(), os.getpid()),
                                 headers=rec.header_block(), payload=rec.payload))
    with start(user_install, "--machine-rate", "4", "--machine-burst", "4") as c:
        user_install.write_config(f"server={c.collector_url}\nmax_in_flight=4\n")
        queue = Queue(user_install.paths.spool_dir)
        queue.insert_many(records)
        queue.close()
        with open(user_install.root / "postd.log", "wb") as log:
            postd = user_install.popen("telemetry.daemons.postd.main", stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_until(lambda: c.stats()["stored"] >= 12, timeout=90, what="12 records through the limit")
            finally:
                postd.send_signal(signal.SIGTERM)
                postd.wait(30)
        stats = c.stats()
        assert stats["stored"] == 12 and stats["records"] == 12
        assert stats["rejected_by_rule"].get("rate_limited", 0) >= 1  # it was limited, and waited
        assert sorted(r["payload"] for r in c.records(machine_id=machine)) == sorted(f"payload {i}\n"
                                                                                      for i in range(12))


def test_a_tls_handshake_never_finished_is_closed_at_the_head_deadline(user_install):
    """A client that connects to a TLS collector and sends nothing holds its descriptor no
    longer than the head deadline (asyncio alone would keep it for 60 s)."""
    pki = make_pki(user_install.root)
    tls = ("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"))
    with start(user_install, *tls, "--head-timeout", "1") as c:
        parts = urllib.parse.urlsplit(c.url)
        with socket.create_connection((parts.hostname, parts.port)) as s:
            s.settimeout(30)  # well under asyncio's own 60 s
            try:
                closed = s.recv(1) == b""
            except ConnectionResetError:
                closed = True
            except TimeoutError:
                closed = False
        assert closed, "the server kept a connection that never began its TLS handshake"
        ca = str(pki / "ca.pem")
        assert curl(c.url, "/v2/collector", cainfo=ca, headers=header_list(VALID), body=b"after").status == 201
