"""GET /metrics from several workers, read with prometheus-client's own parser, and the
collector end to end on PostgreSQL with several workers behind one port."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import psutil
import pytest
from collector_support import VALID, http_request, post_headers, record_fields, temporary_postgres
from support import METADATA, wait_until

from telemetry import headers as H
from telemetry_collector.launch import start_collector

prometheus_parser = pytest.importorskip("prometheus_client.parser", reason="prometheus-client is not installed")


def scrape(url: str, token: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics, parsed by prometheus-client: (sample name, labels) -> value."""
    headers = [("Authorization", f"Bearer {token}")] if token else []
    answer = http_request(url, "GET", "/metrics", headers)
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in prometheus_parser.text_string_to_metric_families(answer.body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((f"telemetry_collector_{name}", tuple(sorted(labels.items()))), 0.0)


def test_metrics_match_what_was_sent(user_install):
    with start_collector(f"sqlite:///{user_install.root}/r.db", env=user_install.env, args=["--workers", "2"],
                         log_path=str(user_install.root / "c.log")) as c:
        for i in range(6):
            assert post_headers(c.url, record_fields(**{H.CLASSIFICATION: f"org.clearlinux/m/{i}"})).status == 201
        for _ in range(3):
            assert post_headers(c.url, record_fields(**{H.CLASSIFICATION: "com.example/m/x"})).status == 201
        rid = uuid.uuid4().hex
        assert post_headers(c.url, VALID, record_id=rid).status == 201
        assert post_headers(c.url, VALID, record_id=rid).status == 200
        assert post_headers(c.url, VALID, tid="wrong").status == 400
        assert post_headers(c.url, record_fields(**{H.ARCH: "vax"})).status == 400
        assert post_headers(c.url, record_fields(**{H.ARCH: "pdp11"})).status == 400
        assert http_request(c.url, "GET", "/nowhere").status == 404
        assert http_request(c.url, "GET", "/api/stats").status == 401  # no credential
        assert c.stats()["stored"] == 10  # the launcher's token
        samples = scrape(c.url)
        assert value(samples, "workers") == 2
        assert value(samples, "requests_total", route="/v2/collector", status="201") == 10
        assert value(samples, "requests_total", route="/v2/collector", status="200") == 1
        assert value(samples, "requests_total", route="/v2/collector", status="400") == 3
        assert value(samples, "requests_total", route="other", status="404") == 1
        assert value(samples, "requests_total", route="/api/stats", status="401") == 1
        assert value(samples, "requests_total", route="/api/stats", status="200") == 1
        assert value(samples, "refused_total", reason="unauthenticated") == 1
        assert value(samples, "records_total", domain="org_clearlinux", outcome="accepted") == 7
        assert value(samples, "records_total", domain="org_clearlinux", outcome="duplicate") == 1
        assert value(samples, "records_total", domain="com_example", outcome="accepted") == 3
        assert value(samples, "rejected_total", reason="tid") == 1
        assert value(samples, "rejected_total", reason="arch") == 2
        assert value(samples, "dispatched_total", dispatcher="store", outcome="ok") == 11
        assert value(samples, "dispatch_seconds_count", dispatcher="store") == 11
        assert value(samples, "batch_records_sum", dispatcher="store") == 11  # one per record, in batches
        assert value(samples, "request_seconds_count") == 14
        again = scrape(c.url)  # the first scrape is counted too
        assert value(again, "requests_total", route="/metrics", status="200") == 1


def test_metrics_can_require_a_read_credential(user_install):
    """--metrics-auth: /metrics wants a read token like /api/*; without it /metrics is open."""
    from telemetry_collector.launch import make_token

    database = f"sqlite:///{user_install.root}/r.db"
    with start_collector(database, env=user_install.env, args=["--metrics-auth"]) as c:
        refused = http_request(c.url, "GET", "/metrics")
        assert refused.status == 401 and "Bearer" in refused.headers["www-authenticate"]
        assert http_request(c.url, "GET", "/metrics", [("Authorization", "Bearer nope")]).status == 401
        reader = make_token(database, "prometheus", scope="read", env=user_install.env)
        assert http_request(c.url, "POST", "/metrics", [("Authorization", f"Bearer {reader}")]).status == 405
        s = scrape(c.url, reader)
        assert value(s, "requests_total", route="/metrics", status="401") == 2
        assert value(s, "refused_total", reason="unauthenticated") == 2
    with start_collector(database, env=user_install.env) as c:
        assert http_request(c.url, "GET", "/metrics").status == 200


def test_postgresql_end_to_end_with_several_workers(user_install):
    """telempostd delivers through three workers into PostgreSQL: every record stored once, the
    metrics of all workers summed; a worker killed is replaced and the port keeps serving."""
    from telemetry.daemons.store.queue import NewRecord, Queue, Sender
    from telemetry.record import create_record

    count = 300
    rows = []
    for i in range(count):
        rec = create_record("org.clearlinux/e2e/workers", 1 + i % 4, f"e2e {i}\n", metadata=METADATA)
        rows.append(NewRecord(record_id=uuid.uuid4().hex, received_at=time.time(),
                              sender=Sender(os.getuid(), os.getgid(), os.getpid()),
                              headers=rec.with_machine_id(f"{i:032x}").header_block(), payload=rec.payload))
    with temporary_postgres() as pg, start_collector(pg.create_database(), env=user_install.env,
                                                     args=["--workers", "3", "--machine-rate", "0"],
                                                     log_path=str(user_install.root / "c.log")) as c:
        user_install.write_config(f"server={c.collector_url}\nmax_in_flight=8\n")
        queue = Queue(user_install.paths.spool_dir)
        queue.insert_many(rows)
        queue.close()
        with open(user_install.root / "postd.log", "wb") as log:
            postd = user_install.popen("telemetry.daemons.postd.main", stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: c.stats()["records"] >= count, timeout=120, what=f"{count} records stored")
        finally:
            postd.send_signal(signal.SIGTERM)
            postd.wait(30)
        stored = c.records(classification="org.clearlinux/e2e/workers", limit=1000)
        assert sorted(r["machine_id"] for r in stored) == [f"{i:032x}" for i in range(count)]
        samples = scrape(c.url)
        assert value(samples, "records_total", domain="org_clearlinux", outcome="accepted") == count
        assert value(samples, "workers") == 3

        workers = psutil.Process(c.process.pid).children()
        assert len(workers) == 3
        os.kill(workers[0].pid, signal.SIGKILL)
        wait_until(lambda: value(scrape(c.url), "workers") == 3 and len(psutil.Process(c.process.pid).children()) == 3
                   and workers[0].pid not in [p.pid for p in psutil.Process(c.process.pid).children()],
                   what="the killed worker replaced")
        for _ in range(12):  # new connections: the kernel spreads them over every worker
            assert post_headers(c.url, record_fields(**{H.CLASSIFICATION: "org.clearlinux/e2e/after"})).status == 201
        assert c.stats()["records"] == count + 12
        # The dead worker's counts stay in the sums.
        assert value(scrape(c.url), "records_total", domain="org_clearlinux", outcome="accepted") == count + 12
        assert c.stop() == 0


def test_the_dashboard_uses_only_metrics_the_collector_has():
    import json
    import re
    from pathlib import Path

    from prometheus_client import CollectorRegistry

    from telemetry_collector.metrics import Metrics

    registry = CollectorRegistry()
    Metrics(registry)
    names = set()
    for family in registry.collect():
        names |= {s.name for s in family.samples} | {family.name}
    names |= {f"{n}_{suffix}" for n in names for suffix in ("bucket", "sum", "count", "total")}
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-collector.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"]
            for m in re.findall(r"telemetry_collector_[a-z_]+", t["expr"])}
    assert used and used <= names, used - names
