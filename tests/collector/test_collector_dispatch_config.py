"""The pure parts of dispatch: the routes file, the JSON message, Kafka's producer settings."""

from __future__ import annotations

import json
import re

import pytest
from collector_support import new_record
from hypothesis import given
from hypothesis import strategies as st

from telemetry import headers as H
from telemetry_collector.dispatch import check_workers
from telemetry_collector.dispatch.config import (
    DispatchConfig,
    DispatchConfigError,
    Kind,
    ZmqMode,
    load_dispatch_config,
    parse_dispatch_config,
)
from telemetry_collector.dispatch.kafka import producer_settings
from telemetry_collector.dispatch.message import (
    SCHEMA_VERSION,
    MessageError,
    build_message,
    channel_name,
    read_message,
)

FLEET = {
    "namespace": "fleet",
    "records": {"org.clearlinux/crash/*": ["store", "nats"], "org.clearlinux/*": ["kafka", "log"],
                "*": ["store", "zmq"]},
    "reliable_ack": {"org.clearlinux/crash/*": "nats"},
    "kafka": {"bootstrap.servers": "k1:9092", "linger.ms": 20, "enable.idempotence": True},
    "zmq": {"endpoint": "tcp://127.0.0.1:5288", "mode": "connect"},
}


def test_routes_first_match_and_reliable_defaults():
    c = parse_dispatch_config(FLEET)
    crash = c.route("org.clearlinux/crash/clr")
    assert crash.dispatchers == (Kind.STORE, Kind.NATS) and crash.reliable is Kind.NATS
    other = c.route("org.clearlinux/hello/world")
    assert other.dispatchers == (Kind.KAFKA, Kind.LOG) and other.reliable is None
    rest = c.route("com.example/x/y")
    assert rest.reliable is Kind.STORE  # the store decides where it is listed and nothing is named
    assert c.kinds == {Kind.STORE, Kind.NATS, Kind.KAFKA, Kind.LOG, Kind.ZMQ}
    assert [r.pattern for r in c.unreliable_routes()] == ["org.clearlinux/*"]
    assert c.kafka == {"bootstrap.servers": "k1:9092", "linger.ms": "20", "enable.idempotence": "true"}
    assert c.zmq.mode is ZmqMode.CONNECT


def test_default_is_the_store_alone():
    for c in (DispatchConfig(), parse_dispatch_config({})):
        r = c.route("a/b/c")
        assert r.dispatchers == (Kind.STORE,) and r.reliable is Kind.STORE


def test_a_catch_all_is_added_and_can_drop():
    c = parse_dispatch_config({"records": {"a/*": ["log"]}})
    assert c.route("b/c/d").dispatchers == (Kind.STORE,)
    dropping = parse_dispatch_config({"records": {"a/*": ["store"], "*": []}})
    assert dropping.route("b/c/d").dispatchers == () and dropping.unreliable_routes() == []


@pytest.mark.parametrize(("doc", "message"), [
    ({"records": {"*": ["store"], "a/*": ["store"]}}, "comes after \"*\""),
    ({"records": {"*": ["stor"]}}, "unknown dispatcher 'stor'"),
    ({"records": {"*": "store"}}, "expected a list"),
    ({"records": {"*": ["store", "store"]}}, "listed twice"),
    ({"records": {"": ["store"]}}, "the pattern is empty"),
    ({"records": {"*": ["zmq"]}, "reliable_ack": {"*": "zmq"}}, "zmq cannot confirm"),
    ({"records": {"*": ["log"]}, "reliable_ack": {"*": "nats"}}, "not among the route's dispatchers"),
    ({"records": {"*": ["store"]}, "reliable_ack": {"x/*": "store"}}, "no such pattern"),
    ({"records": {"*": ["kafka"]}}, "set \"bootstrap.servers\""),
    ({"namespace": "a.b"}, "namespace"),
    ({"ack_timeout": 0}, "ack_timeout: 0 is outside"),
    ({"retry_after": 1.5}, "retry_after: expected an integer"),
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"nats": {"servers": ["http://x"]}}, "nats://HOST:PORT"),
    ({"nats": {"replicas": 7}}, "replicas: 7 is outside"),
    ({"nats": {"stream": "a.b"}}, "stream"),
    ({"nats": {"create_stream": "yes"}}, "expected true or false"),
    ({"zmq": {"mode": "listen"}}, "\"bind\" or \"connect\""),
    ({"zmq": {"endpoint": "localhost"}}, "not a ZeroMQ endpoint"),
    ({"kafka": {"x": [1]}}, "expected a string, number or boolean"),
])
def test_bad_configurations_name_the_key(doc, message):
    with pytest.raises(DispatchConfigError, match=re.escape(message)) as e:
        parse_dispatch_config(doc, "d.toml")
    assert str(e.value).startswith("d.toml: ") and "\n" not in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(DispatchConfigError, match="cannot read dispatch configuration"):
        load_dispatch_config(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[records\n")
    with pytest.raises(DispatchConfigError, match="not valid TOML"):
        load_dispatch_config(str(bad))
    good = tmp_path / "good.toml"
    good.write_text('[records]\n"a/*" = ["store", "log"]\n')
    assert load_dispatch_config(str(good)).route("a/b/c").dispatchers == (Kind.STORE, Kind.LOG)


def test_zmq_bind_needs_one_worker():
    c = parse_dispatch_config({"records": {"*": ["store", "zmq"]}})
    check_workers(c, 1)
    with pytest.raises(DispatchConfigError, match="one worker only"):
        check_workers(c, 2)
    check_workers(parse_dispatch_config({"records": {"*": ["store", "zmq"]}, "zmq": {"mode": "connect"}}), 4)


@given(st.text(max_size=80))
def test_patterns_match_like_the_purge_filter(classification):
    c = parse_dispatch_config({"records": {"a*/x/*": ["log"], "*": ["store"]}})
    expected = re.fullmatch(r"a.*/x/.*", classification, re.DOTALL) is not None
    assert (c.route(classification).dispatchers == (Kind.LOG,)) is expected


# --- the message --------------------------------------------------------------------------

def test_message_has_every_field_and_round_trips():
    rec = new_record(3, record_id="r" * 32, payload="caf\u00e9\n", classification="org.clearlinux/crash/clr")
    m = build_message(rec, "fleet")
    assert (m.key, m.channel) == ("r" * 32, "fleet.org_clearlinux")
    doc = read_message(m.body)
    assert doc["schema"] == SCHEMA_VERSION and doc["record_id"] == "r" * 32 and doc["received_at"] == rec.ts_reception
    assert doc["payload"] == "caf\u00e9\n"
    h = doc["headers"]
    assert set(h) == {*H.RECORD_HEADERS, "external"}
    assert (h[H.SEVERITY], h[H.CREATION_TIMESTAMP], h[H.CLASSIFICATION]) == (rec.severity, rec.ts_capture,
                                                                             rec.classification)
    assert json.loads(m.body.decode("utf-8")) == doc


def test_read_message_refuses_other_shapes():
    for body in (b"[]", b"{}", b'{"schema": 2}', b"\xff", b'{"schema": 1, "record_id": "x"}'):
        with pytest.raises(MessageError):
            read_message(body)


@given(st.text(max_size=200))
def test_channel_names_are_valid_subjects_and_topics(classification):
    name = channel_name("telemetry", classification)
    # NATS: two tokens, no wildcard or space; Kafka: [A-Za-z0-9._-], at most 249.
    assert re.fullmatch(r"telemetry\.[A-Za-z0-9_-]{1,64}", name), name


# --- Kafka settings -----------------------------------------------------------------------

def test_kafka_settings_pass_through_and_reliability():
    user = {"bootstrap.servers": "k:9092", "compression.type": "zstd"}
    loose = producer_settings(user, reliable=False, ack_timeout=5)
    assert loose["compression.type"] == "zstd" and loose["message.timeout.ms"] == "5000" and "acks" not in loose
    firm = producer_settings(user, reliable=True, ack_timeout=2.5)
    assert firm["acks"] == "all" and firm["enable.idempotence"] == "true" and firm["message.timeout.ms"] == "2500"
    assert producer_settings({**user, "delivery.timeout.ms": "9000"}, reliable=True,
                             ack_timeout=1).get("message.timeout.ms") is None
    assert producer_settings({**user, "acks": "-1"}, reliable=True, ack_timeout=1)["acks"] == "-1"
    with pytest.raises(DispatchConfigError, match="needs acks=all"):
        producer_settings({**user, "acks": "1"}, reliable=True, ack_timeout=1)
    with pytest.raises(DispatchConfigError, match="enable.idempotence"):
        producer_settings({**user, "enable.idempotence": "false"}, reliable=True, ack_timeout=1)


def test_kafka_producer_accepts_the_settings():
    """librdkafka itself takes what producer_settings builds (no broker is contacted)."""
    confluent_kafka = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")
    conf = producer_settings({"bootstrap.servers": "127.0.0.1:9", "linger.ms": "20"}, reliable=True, ack_timeout=1)
    confluent_kafka.Producer(conf).flush(0)
    with pytest.raises(confluent_kafka.KafkaException, match="No such configuration property"):
        confluent_kafka.Producer({**conf, "no.such.setting": "1"})


def test_the_documented_example_and_schema():
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    c = load_dispatch_config(str(docs / "collector-dispatch.toml"))
    assert c.route("org.clearlinux/crash/clr").reliable is Kind.NATS
    schema = json.loads((docs / "record-message.schema.json").read_text())
    doc = read_message(build_message(new_record(1, record_id="x" * 32), "telemetry").body)
    assert set(schema["required"]) == set(doc)
    assert set(schema["properties"]["headers"]["required"]) == set(doc["headers"])


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


@given(classification=_TEXT, payload=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300),
       host_type=_TEXT, severity=st.integers(1, 4), ts=st.integers(0, 253402300799), external=st.booleans())
def test_every_record_round_trips_through_its_message(classification, payload, host_type, severity, ts, external):
    rec = new_record(0, record_id="r" * 32, classification=classification, payload=payload, host_type=host_type,
                     severity=severity, ts_capture=ts, external=external)
    m = build_message(rec, "ns")
    doc = read_message(m.body)
    assert doc["payload"] == payload and doc["record_id"] == m.key == "r" * 32
    h = doc["headers"]
    assert (h[H.CLASSIFICATION], h[H.HOST_TYPE], h[H.SEVERITY], h[H.CREATION_TIMESTAMP], h["external"]) == (
        classification, host_type, severity, ts, external)
    assert m.channel == channel_name("ns", classification)
