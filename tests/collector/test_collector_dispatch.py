"""Dispatch at work: a real collector process, a real NATS server with JetStream, a real
ZeroMQ subscriber, a Kafka broker when one is named, telempostd delivering through it all.

The NATS server (Debian's nats-server) runs on a free port of 127.0.0.1 with its store in a
temporary directory (`telemetry_collector.tempnats`); tests that kill it get their own.
"""

from __future__ import annotations

import http.client
import os
import selectors
import signal
import subprocess
import threading
import time
import urllib.parse
import uuid

import pytest
from collector_support import VALID, header_list, http_request, post_headers, record_fields
from support import METADATA, free_port, wait_until

from telemetry import headers as H
from telemetry_collector.dispatch.message import read_message
from telemetry_collector.launch import start_collector
from telemetry_collector.tempnats import TempNatsError, TemporaryNats, read_stream

CRASH = "org.clearlinux/crash/clr"
STREAM = "TELEMETRY"


def nats_or_skip() -> TemporaryNats:
    pytest.importorskip("nats", reason="nats-py is not installed (pip install 'telemetry-collector[nats]')")
    try:
        return TemporaryNats().start()
    except TempNatsError as e:
        pytest.skip(f"no NATS server for this test: {e}")


@pytest.fixture
def nats_server():
    ns = nats_or_skip()
    yield ns
    ns.remove()


def collector(inst, config: str, *args: str, database: str | None = None):
    path = inst.root / "dispatch.toml"
    path.write_text(config)
    return start_collector(database or f"sqlite:///{inst.root}/records.db", env=inst.env,
                           log_path=str(inst.root / "collector.log"), args=["--dispatch", str(path), *args])


def nats_config(ns: TemporaryNats, *, extra: str = "", records: str | None = None) -> str:
    records = records or f'"{CRASH.rsplit("/", 1)[0]}/*" = ["store", "nats"]\n"*" = ["store"]\n'
    return (f"retry_after = 1\nack_timeout = 2\n{extra}\n[records]\n{records}\n"
            f'[reliable_ack]\n"{CRASH.rsplit("/", 1)[0]}/*" = "nats"\n'
            f'[nats]\nservers = ["{ns.url}"]\nreconnect_wait = 0.2\n')


def stream_ids(ns: TemporaryNats) -> list[str]:
    return [read_message(m.data)["record_id"] for m in read_stream(ns.url, STREAM)]


# --- NATS JetStream -------------------------------------------------------------------------

def test_records_reach_their_subjects_with_the_documented_schema(user_install, nats_server):
    config = ('namespace = "fleet"\n[records]\n"org.clearlinux/crash/*" = ["store", "nats"]\n'
              '"com.example/*" = ["nats"]\n"*" = ["store"]\n'
              '[reliable_ack]\n"org.clearlinux/crash/*" = "nats"\n"com.example/*" = "nats"\n'
              f'[nats]\nservers = ["{nats_server.url}"]\n')
    sent = {}
    with collector(user_install, config) as c:
        for i, classification in enumerate([CRASH, CRASH, "com.example/app/start", "org.clearlinux/hello/world"]):
            rid = uuid.uuid4().hex
            fields = record_fields(**{H.CLASSIFICATION: classification, H.SEVERITY: str(1 + i)})
            answer = post_headers(c.url, fields, f"payload {i}".encode(), record_id=rid)
            assert answer.status == 201, answer.body
            sent[rid] = (fields, f"payload {i}")
        no_id = post_headers(c.url, record_fields(**{H.CLASSIFICATION: "com.example/app/stop"}), b"anonymous")
        assert no_id.status == 201 and no_id.json()["id"] is None  # the store did not decide this one
        repeat_id = next(iter(sent))
        assert post_headers(c.url, sent[repeat_id][0], b"again", record_id=repeat_id).status == 200
        assert c.stats()["records"] == 3  # the crash records and the hello record
    messages = read_stream(nats_server.url, STREAM)
    assert len(messages) == 4
    by_id = {}
    for m in messages:
        doc = read_message(m.data)
        assert m.headers["Nats-Msg-Id"] == doc["record_id"] and m.headers["Telemetry-Schema"] == "1"
        assert m.subject == "fleet." + doc["headers"]["classification"].split("/")[0].replace(".", "_")
        by_id[doc["record_id"]] = doc
    anonymous = [d for rid, d in by_id.items() if rid not in sent]
    assert len(anonymous) == 1 and anonymous[0]["payload"] == "anonymous" and len(anonymous[0]["record_id"]) == 32
    for rid, (fields, payload) in sent.items():
        if fields[H.CLASSIFICATION].startswith("org.clearlinux/hello"):
            assert rid not in by_id
            continue
        doc = by_id[rid]
        assert doc["payload"] == payload and doc["headers"]["external"] is False
        for name, value in fields.items():
            assert str(doc["headers"][name]) == value, name
        assert isinstance(doc["received_at"], int) and abs(doc["received_at"] - time.time()) < 3600


def test_reliable_route_answers_503_while_nats_is_down_and_telempostd_delivers_everything(
        user_install, nats_server):
    """NATS is down: the collector answers 503 with Retry-After, telempostd keeps the records;
    NATS comes back: every record arrives, each once (counted by record id)."""
    records = _queue_records(user_install, 20, CRASH)
    with collector(user_install, nats_config(nats_server)) as c:
        nats_server.stop()
        down = post_headers(c.url, record_fields(**{H.CLASSIFICATION: CRASH}))
        assert down.status == 503 and down.headers["retry-after"] == "1"
        assert "NATS JetStream is unavailable" in down.message
        user_install.write_config(f"server={c.collector_url}\nmax_in_flight=4\n")
        with open(user_install.root / "postd.log", "wb") as log:
            postd = user_install.popen("telemetry.daemons.postd.main", stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: _metric(c, 'records_total{domain="org_clearlinux",outcome="unavailable"}') >= 5,
                       what="telempostd's records refused while NATS is down")
            nats_server.start()
            wait_until(lambda: len(_stream_ids_or_none(nats_server)) >= 20, timeout=60,
                       what="every record in the stream")
        finally:
            postd.send_signal(signal.SIGTERM)
            postd.wait(30)
    ids = stream_ids(nats_server)
    assert sorted(ids) == sorted(records) and len(ids) == len(set(ids))


def test_nats_killed_mid_stream_loses_nothing_acknowledged(user_install, nats_server):
    """Posters keep sending while the NATS server is SIGKILLed and restarted: every record
    answered 2xx is in the stream afterwards."""
    with collector(user_install, nats_config(nats_server), "--workers", "2", "--machine-rate", "0") as c:
        posters = _Posters(c.url, CRASH, threads=4)
        posters.start()
        try:
            wait_until(lambda: posters.acked_count() >= 200, what="records acknowledged before the kill")
            nats_server.kill()
            killed_at = posters.acked_count()
            nats_server.start()
            wait_until(lambda: posters.acked_count() >= killed_at + 200, timeout=60,
                       what="records acknowledged after the restart")
        finally:
            posters.stop()
    acked = posters.acked_ids()
    stored = set(stream_ids(nats_server))
    assert acked <= stored, f"{len(acked - stored)} acknowledged records are missing from the stream"
    assert posters.unexpected == [], posters.unexpected[:3]
    print(f"{len(acked)} acknowledged, {posters.refused} refused (503) while NATS was away")


def test_a_deleted_stream_is_made_again(user_install, nats_server):
    """The stream vanishes under a running collector (deleted, or a server back without its
    store): records are answered 503 until the collector has made it again."""
    import asyncio

    import nats

    async def delete_stream() -> None:
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().delete_stream(STREAM)
        await nc.close()

    crash = record_fields(**{H.CLASSIFICATION: CRASH})
    with collector(user_install, nats_config(nats_server)) as c:
        assert post_headers(c.url, crash).status == 201
        asyncio.run(delete_stream())
        assert post_headers(c.url, crash).status == 503
        wait_until(lambda: post_headers(c.url, crash).status == 201, what="the stream made again")
    assert len(stream_ids(nats_server)) == 1


# --- ZeroMQ, log, Kafka -----------------------------------------------------------------------

def test_zmq_subscriber_receives_what_was_published(user_install):
    zmq = pytest.importorskip("zmq", reason="pyzmq is not installed (pip install 'telemetry-collector[zmq]')")
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub.bind(endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"telemetry.org_clearlinux")
    config = f'[records]\n"*" = ["store", "zmq"]\n[zmq]\nendpoint = "{endpoint}"\nmode = "connect"\n'
    try:
        with collector(user_install, config, "--workers", "2") as c:
            # A new PUB connection drops what it sends before the subscription reaches it.
            def first_arrives() -> bool:
                post_headers(c.url, VALID, b"warm-up")
                return bool(sub.poll(200))
            wait_until(first_arrives, what="the subscription to reach the publisher")
            while sub.poll(200):
                sub.recv_multipart()
            ids = [uuid.uuid4().hex for _ in range(5)]
            for rid in ids:
                assert post_headers(c.url, VALID, b"over zmq", record_id=rid).status == 201
            got = []
            while len(got) < 5 and sub.poll(10_000):
                topic, body = sub.recv_multipart()
                assert topic == b"telemetry.org_clearlinux"
                got.append(read_message(body))
            assert sorted(d["record_id"] for d in got) == sorted(ids)
            assert {d["payload"] for d in got} == {"over zmq"}
    finally:
        sub.close(0)
        ctx.term()


def test_log_dispatcher_writes_json_lines_on_stdout(user_install):
    with collector(user_install, '[records]\n"*" = ["store", "log"]\n') as c:
        rid = uuid.uuid4().hex
        assert post_headers(c.url, VALID, b"to the log", record_id=rid).status == 201
        line = _read_line(c.process.stdout, 30)
    doc = read_message(line)
    assert doc["record_id"] == rid and doc["payload"] == "to the log"


def test_kafka_unreachable_answers_503(user_install):
    """No broker listens: a route whose answer Kafka decides is refused with 503, and the
    store beside it still gets the record."""
    pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")
    config = (f'ack_timeout = 1\nretry_after = 7\n[records]\n"*" = ["store", "kafka"]\n'
              f'[reliable_ack]\n"*" = "kafka"\n[kafka]\n"bootstrap.servers" = "127.0.0.1:{free_port()}"\n')
    with collector(user_install, config) as c:
        answer = post_headers(c.url, VALID)
        assert answer.status == 503 and answer.headers["retry-after"] == "7" and "Kafka" in answer.message
        wait_until(lambda: c.stats()["records"] == 1, what="the record in the store")
        wait_until(lambda: _metric(c, 'dispatched_total{dispatcher="kafka",outcome="failed"}') == 1,
                   what="the failed delivery counted")


# --- the dispatcher contract, for each stream ------------------------------------------------

@pytest.fixture(params=["nats", "kafka"])
def stream(request, user_install):
    if request.param == "nats":
        ns = nats_or_skip()
        config = (f'[records]\n"*" = ["store", "nats"]\n[reliable_ack]\n"*" = "nats"\n'
                  f'[nats]\nservers = ["{ns.url}"]\n')
        yield config, lambda: [(m.subject, m.headers["Nats-Msg-Id"], m.data) for m in read_stream(ns.url, STREAM)]
        ns.remove()
        return
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        pytest.skip("no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS to run the Kafka dispatcher's contract tests")
    namespace = "t" + uuid.uuid4().hex[:8]
    config = (f'namespace = "{namespace}"\n[records]\n"*" = ["store", "kafka"]\n[reliable_ack]\n"*" = "kafka"\n'
              f'[kafka]\n"bootstrap.servers" = "{servers}"\n')
    yield config, lambda: _kafka_messages(servers, f"{namespace}.org_clearlinux")


def test_dispatcher_contract(user_install, stream):
    """A record is answered 201 only once the stream has it, as a schema-1 message whose key
    is the record id, on the channel of its domain; a repeat is answered 2xx."""
    config, read = stream
    ids = [uuid.uuid4().hex for _ in range(10)]
    with collector(user_install, config) as c:
        for i, rid in enumerate(ids):
            assert post_headers(c.url, VALID, f"contract {i}".encode(), record_id=rid).status == 201
        messages = read()
        assert post_headers(c.url, VALID, b"again", record_id=ids[0]).status in (200, 201)
    assert sorted(key for _, key, _ in messages) == sorted(ids)
    for channel, key, body in messages:
        doc = read_message(body)
        assert doc["record_id"] == key and channel.endswith(".org_clearlinux")
        assert doc["headers"]["machine_id"] == VALID[H.MACHINE_ID]


def _kafka_messages(servers: str, topic: str) -> list[tuple[str, str, bytes]]:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": servers, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    out = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < 10 and time.monotonic() < deadline:
            m = consumer.poll(1.0)
            if m is not None and m.error() is None:
                out.append((m.topic(), m.key().decode(), m.value()))
    finally:
        consumer.close()
    return out


# --- command line -------------------------------------------------------------------------

@pytest.mark.parametrize(("config", "args", "expected"), [
    (None, ["--dispatch", "/nonexistent/d.toml"], "cannot read dispatch configuration"),
    ('[records]\n"*" = ["nope"]\n', [], "unknown dispatcher 'nope'"),
    ('[records]\n"*" = ["zmq"]\n', ["--workers", "2"], "one worker only"),
    (None, ["--workers", "0"], "--workers"),
])
def test_bad_dispatch_command_lines(user_install, config, args, expected):
    if config is not None:
        (user_install.root / "d.toml").write_text(config)
        args = ["--dispatch", str(user_install.root / "d.toml"), *args]
    done = user_install.run("telemetry_collector.main", "--database", f"{user_install.root}/r.db", *args)
    err = done.stderr.decode()
    assert done.returncode != 0 and expected in err and "Traceback" not in err, err
    if not err.startswith("Usage:"):  # click's own usage errors come with their usage lines
        assert len(err.strip().splitlines()) == 1, err


# --- helpers --------------------------------------------------------------------------------

def _metric(c, name_and_labels: str) -> float:
    body = http_request(c.url, "GET", "/metrics").body.decode()
    for line in body.splitlines():
        if line.startswith("telemetry_collector_" + name_and_labels + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _stream_ids_or_none(ns: TemporaryNats) -> list[str]:
    try:
        return stream_ids(ns)
    except Exception:  # noqa: BLE001 - the server is still starting
        return []


def _queue_records(inst, count: int, classification: str) -> list[str]:
    from telemetry.daemons.store.queue import NewRecord, Queue, Sender
    from telemetry.record import create_record

    ids, rows = [], []
    for i in range(count):
        rec = create_record(classification, 1 + i % 4, f"queued {i}\n", metadata=METADATA)
        rid = uuid.uuid4().hex
        ids.append(rid)
        rows.append(NewRecord(record_id=rid, received_at=time.time(),
                              sender=Sender(os.getuid(), os.getgid(), os.getpid()),
                              headers=rec.header_block(), payload=rec.payload))
    queue = Queue(inst.paths.spool_dir)
    queue.insert_many(rows)
    queue.close()
    return ids


def _read_line(pipe, timeout: float) -> bytes:
    with selectors.DefaultSelector() as sel:
        sel.register(pipe, selectors.EVENT_READ)
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            assert sel.select(max(0.0, deadline - time.monotonic())), "no line on the collector's stdout"
            chunk = os.read(pipe.fileno(), 65536)
            assert chunk, "the collector closed its stdout"
            line += chunk
    return line.split(b"\n", 1)[0]


class _Posters:
    """Threads POSTing distinct records on kept-alive connections, noting what was acknowledged."""

    def __init__(self, url: str, classification: str, threads: int):
        self.url = urllib.parse.urlsplit(url)
        self.headers = dict(header_list(record_fields(**{H.CLASSIFICATION: classification})))
        self._acked: list[str] = []
        self.unexpected: list[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def acked_count(self) -> int:
        with self._lock:
            return len(self._acked)

    def acked_ids(self) -> set[str]:
        with self._lock:
            return set(self._acked)

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=30)
        try:
            while not self._stop.is_set():
                rid = uuid.uuid4().hex
                try:
                    conn.request("POST", "/v2/collector", b"mid-stream",
                                 {**self.headers, H.RECORD_ID_HEADER: rid})
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    continue
                if response.status in (200, 201):
                    with self._lock:
                        self._acked.append(rid)
                elif response.status == 503:
                    self.refused += 1
                    time.sleep(0.05)
                else:
                    self.unexpected.append(f"{response.status} for {rid}")
        finally:
            conn.close()
