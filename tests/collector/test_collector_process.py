"""telemetry-collector as a program: command line, restarts, purge, TLS, socket activation,
database failures, and telempostd delivering to it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import pycurl
import pytest
from collector_support import (
    TID,
    VALID,
    header_list,
    make_pki,
    new_record,
    post_headers,
    record_fields,
    temporary_postgres,
)
from support import METADATA, wait_until

from telemetry import headers as H
from telemetry_collector.dburl import parse_database_url
from telemetry_collector.launch import CollectorStartError, start_collector
from telemetry_collector.query import DAY
from telemetry_collector.store import open_store

MODULE = "telemetry_collector.main"


def start(inst, database: str | None = None, *args: str, env: dict[str, str] | None = None):
    db = database or f"sqlite:///{inst.root}/records.db"
    return start_collector(db, env={**inst.env, **(env or {})}, log_path=str(inst.root / "collector.log"),
                           args=args)


def one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    err = result.stderr.decode()
    assert result.returncode != 0, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    return err


# --- command line -----------------------------------------------------------------------

@pytest.mark.parametrize(("args", "expected"), [
    (["--listen", "nonsense"], "expected HOST:PORT"),
    (["--listen", "127.0.0.1:99999"], "expected HOST:PORT"),
    (["--listen", "no-such-host.invalid:80"], "cannot listen on no-such-host.invalid:80"),
    (["--database", "mysql://h/d"], "the scheme must be sqlite or postgresql"),
    (["--database", "sqlite:///:memory:"], "in-memory SQLite"),
    (["--database", "/proc/self/nope/x.db"], "cannot open SQLite database"),
    (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "does not exist"),
    (["--tls-client-ca", "/etc/hostname"], "--tls-client-ca needs --tls-cert"),
    (["--purge-filter", "color=red:1"], "is not FIELD=VALUE:DAYS"),
    (["--purge-days", "-1"], "--purge-days must be 0..1000000"),
    (["--max-body", "-1"], "--max-body"),
    (["--durability", "sometimes"], "--durability"),
    (["--bogus"], "No such option"),
    (["--tid", ""], "not a usable telemetry ID"),
    (["--tid", " padded "], "not a usable telemetry ID"),
    (["--trusted-proxy", "10.0.0.0/8"], "is not an IP address"),
    (["--head-timeout", "0"], "--head-timeout"),
    (["--max-header-bytes", "100"], "max-header-bytes must be at least 1024"),
    (["--machine-rate", "-1"], "--machine-rate"),
    (["--address-rate", "5", "--address-burst", "0"], "address-burst must be at least 1"),
])
def test_bad_command_lines(user_install, args, expected):
    err = one_line_error(user_install.run(MODULE, *args), expected)
    errors = [line for line in err.splitlines() if not re.match(r"telemetry-collector: [A-Z]+: ", line)]
    assert len(errors) == 1 and errors[0].startswith("telemetry-collector"), err


def test_unusable_tls_files(user_install):
    junk = user_install.root / "junk.pem"
    junk.write_text("not a certificate\n")
    err = one_line_error(user_install.run(MODULE, "--tls-cert", str(junk), "--tls-key", str(junk)),
                         "cannot use --tls-cert")
    assert len(err.strip().splitlines()) == 1
    one_line_error(user_install.run(MODULE, "--tls-cert", str(junk)), "--tls-cert and --tls-key go together")


def test_unreachable_postgresql(user_install):
    err = one_line_error(user_install.run(MODULE, "--database",
                                          f"postgresql:///x?host={user_install.root}&password=hunter2"),
                         "cannot connect to postgresql")
    assert "hunter2" not in err and len(err.strip().splitlines()) == 1


def test_port_in_use(user_install):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_line_error(user_install.run(MODULE, "--listen", f"127.0.0.1:{port}",
                                        "--database", f"{user_install.root}/r.db"),
                       "cannot listen on 127.0.0.1", "Address already in use")


def test_help_and_version(user_install):
    out = user_install.run(MODULE, "--help")
    assert out.returncode == 0 and b"serve" in out.stdout and b"purge" in out.stdout
    assert user_install.run(MODULE, "serve", "--help").returncode == 0
    version = user_install.run(MODULE, "--version")
    assert version.returncode == 0 and version.stdout.strip()


def test_start_error_is_reported_by_the_launcher(user_install):
    open_fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(CollectorStartError, match="exited with status"):
        start_collector("mysql://nope", env=user_install.env, read_token=False)
    assert len(os.listdir("/proc/self/fd")) == open_fds  # the pipe from the collector is closed
    with pytest.raises(CollectorStartError, match="cannot make a read token: .*the scheme must be sqlite"):
        start(user_install, "mysql://nope")


# --- a running server -----------------------------------------------------------------------

def test_default_database_and_restart_keeps_records(user_install):
    record_id = uuid.uuid4().hex
    with start_collector("", env=user_install.env, log_path=str(user_install.root / "c.log")) as c:
        assert post_headers(c.url, VALID, record_id=record_id).status == 201
        assert c.stop() == 0  # SIGTERM: clean exit
    default = user_install.root / "state/telemetrics/collector/records.db"
    assert default.exists()
    with start_collector("", env=user_install.env, log_path=str(user_install.root / "c.log")) as c:
        again = post_headers(c.url, VALID, record_id=record_id)
        assert again.status == 200
        assert c.stats()["records"] == 1 and c.stats()["duplicates"] == 1


def test_counters_are_on_disk_before_stats_answers(user_install):
    """Rejections are counted in memory; a stats read writes them first, so a crash right
    after it loses none of what it showed."""
    with start(user_install) as c:
        assert post_headers(c.url, VALID, tid="wrong").status == 400
        assert c.stats()["rejected_by_rule"] == {"tid": 1}
        c.process.kill()
        c.process.wait()
    with start(user_install) as c:
        assert c.stats()["rejected_by_rule"] == {"tid": 1}


def test_tids_from_the_environment(user_install):
    with start(user_install, None, env={"TELEMETRY_COLLECTOR_TID": "first second"}) as c:
        assert post_headers(c.url, VALID, tid="second").status == 201
        assert post_headers(c.url, VALID, tid=TID).status == 400


def test_purge_command(user_install):
    url = f"sqlite:///{user_install.root}/p.db"
    store = open_store(parse_database_url(url))
    now = int(time.time())
    with store.transaction():
        store.insert(new_record(1, ts_reception=now - 40 * DAY))
        store.insert(new_record(2, ts_reception=now - 40 * DAY, severity=4))
        store.insert(new_record(3, ts_reception=now))
    store.close()
    done = user_install.run(MODULE, "purge", "--database", url, "--purge-filter", "severity=4:0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == "deleted 1 records"
    stats = user_install.run(MODULE, "stats", "--database", url)
    assert stats.returncode == 0 and json.loads(stats.stdout)["records"] == 2
    done = user_install.run(MODULE, "purge", "--database", url, "--purge-days", "0")
    assert done.stdout.decode().strip() == "deleted 0 records"
    one_line_error(user_install.run(MODULE, "purge", "--database", "mysql://x"), "the scheme")


def test_server_purges_at_start(user_install):
    url = f"sqlite:///{user_install.root}/records.db"
    store = open_store(parse_database_url(url))
    with store.transaction():
        store.insert(new_record(1, ts_reception=int(time.time()) - 3 * DAY))
    store.close()
    with start(user_install, url, "--purge-days", "2") as c:
        wait_until(lambda: c.stats()["records"] == 0, what="the start-up purge")


def test_database_failure_answers_503_and_recovers(user_install):
    """PostgreSQL drops the collector's connections: nothing is stored, the answer is 503 with
    Retry-After (telempostd keeps the record), the next POST reconnects."""
    import psycopg

    with temporary_postgres() as pg:
        url = pg.create_database()
        with start(user_install, url) as c:
            assert post_headers(c.url, VALID).status == 201
            with psycopg.connect(pg.url("postgres"), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %s AND pid <> pg_backend_pid()", (url.split("/")[3].split("?")[0],))
            answers = [post_headers(c.url, VALID) for _ in range(3)]
            statuses = [a.status for a in answers]
            assert statuses[0] == 503 and statuses[-1] == 201
            assert answers[0].headers["retry-after"].isdigit() and "database is unavailable" in answers[0].message
            assert "postgresql" not in answers[0].message  # nothing about the server reaches a sender
            answer = post_headers(c.url, VALID)
            assert answer.status == 201
            stats = c.stats()
            assert stats["records"] == 1 + statuses.count(201) + 1
            assert stats["store_errors"] >= 1


def test_records_query_on_a_lost_connection_recovers(user_install):
    import psycopg

    with temporary_postgres() as pg:
        url = pg.create_database()
        with start(user_install, url) as c:
            post_headers(c.url, VALID)
            with psycopg.connect(pg.url("postgres"), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = %s AND pid <> pg_backend_pid()", (url.split("/")[3].split("?")[0],))
            import urllib.error

            results = []
            for _ in range(2):
                try:
                    results.append(len(c.records()))
                except urllib.error.HTTPError as e:
                    results.append(e.code)
            assert results[-1] == 1
            assert results[0] == 1  # a read that finds its connection dropped tries once more on a new one


# --- TLS -----------------------------------------------------------------------------------

def _curl_post(url: str, *, cainfo: str, cert: str | None = None, key: str | None = None) -> int:
    c = pycurl.Curl()
    try:
        c.setopt(pycurl.URL, url + "/v2/collector")
        c.setopt(pycurl.HTTPHEADER, [f"{n}: {v}".encode() for n, v in header_list(VALID)])
        c.setopt(pycurl.POSTFIELDS, b"over tls")
        c.setopt(pycurl.CAINFO, cainfo)
        c.setopt(pycurl.WRITEFUNCTION, lambda data: None)
        if cert:
            c.setopt(pycurl.SSLCERT, cert)
            c.setopt(pycurl.SSLKEY, key)
        c.perform()
        return c.getinfo(pycurl.RESPONSE_CODE)
    finally:
        c.close()


def test_tls_and_client_certificates(user_install):
    pki = make_pki(user_install.root)
    server = ("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"))
    ca = str(pki / "ca.pem")
    with start(user_install, None, *server) as c:
        assert c.url.startswith("https://127.0.0.1:")
        assert _curl_post(c.url, cainfo=ca) == 201
    # (machine identity, which ties Machine-Id to the certificate: test_collector_security)
    with start(user_install, None, *server, "--tls-client-ca", ca, "--no-machine-identity") as c:
        with pytest.raises(pycurl.error):
            _curl_post(c.url, cainfo=ca)
        assert _curl_post(c.url, cainfo=ca, cert=str(pki / "client.pem"), key=str(pki / "client.key")) == 201
        assert c.process.poll() is None


# --- systemd socket activation -------------------------------------------------------------

def test_socket_activation(user_install):
    """systemd hands a listening socket as fd 3 with LISTEN_PID/LISTEN_FDS; the collector serves on it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    fd = listener.fileno()
    script = f'LISTEN_PID=$$ LISTEN_FDS=1 exec "{sys.executable}" -m {MODULE} --database "{user_install.root}/a.db"'
    proc = subprocess.Popen(["sh", "-c", script], env=user_install.env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, pass_fds=(3,), preexec_fn=lambda: os.dup2(fd, 3))
    listener.close()
    try:
        line = proc.stdout.readline().decode()
        assert line.strip() == f"listening on http://127.0.0.1:{port}"
        assert post_headers(f"http://127.0.0.1:{port}", VALID).status == 201
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        proc.stdout.close()


# --- telempostd delivering to the collector ---------------------------------------------------

@pytest.mark.parametrize("request_format", ["headers", "json"])
def test_telempostd_delivers_to_the_collector(user_install, request_format):
    pytest.importorskip("telemetry.daemons.postd.main", reason="telempostd is not installed")
    from telemetry.daemons.store.queue import NewRecord, Queue, Sender
    from telemetry.record import create_record

    records = []
    for i in range(20):
        rec = create_record(f"org.test/postd/{request_format}", 1 + i % 4, f"payload {i} caf\u00e9\n",
                            metadata=METADATA)
        rec = rec.with_machine_id(f"{i:032x}")
        records.append(NewRecord(record_id=uuid.uuid4().hex, received_at=time.time(),
                                 sender=Sender(os.getuid(), os.getgid(), os.getpid()),
                                 headers=rec.header_block(), payload=rec.payload))
    with start(user_install) as c:
        user_install.write_config(f"server={c.collector_url}\nrequest_format={request_format}\n")
        queue = Queue(user_install.paths.spool_dir)
        queue.insert_many(records)
        queue.close()
        log = open(user_install.root / "postd.log", "wb")
        postd = user_install.popen("telemetry.daemons.postd.main", stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: c.stats()["records"] >= 20, timeout=60, what="20 records at the collector")
        finally:
            postd.send_signal(signal.SIGTERM)
            postd.wait(30)
            log.close()
        stored = c.records(classification=f"org.test/postd/{request_format}")
        assert sorted(r["machine_id"] for r in stored) == [f"{i:032x}" for i in range(20)]
        assert {r["payload"] for r in stored} == {f"payload {i} caf\u00e9\n" for i in range(20)}
        assert {r["cpu_model"] for r in stored} == {METADATA.cpu_model}  # whole values, not cut at a space
        stats = c.stats()
        assert stats["rejected"] == 0 and stats["stored"] == 20


def test_field_values_round_trip_through_the_api(user_install):
    with start(user_install) as c:
        fields = record_fields(**{H.HOST_TYPE: "LENOVO|20L8S2N800|ThinkPad T480s"})
        body = post_headers(c.url, fields).json()
        assert c.records()[0] == body
