"""telempostd over TLS: a CA made here with openssl, `cainfo`, mutual TLS, and HTTP/2
against nginx when it is installed."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from http_collector import Collector
from postd_support import (
    Clock,
    enqueue,
    load_config,
    new_row,
    queued_ids,
    record,
    settings_text,
)
from support import free_port, make_pki, wait_until

from telemetry.daemons.postd.main import Counter, Postd

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_context(pki: Path, *, require_client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki / "ca.pem")
    return ctx


def run_once(inst, url: str, later: float = 0, **settings) -> tuple[Postd, object]:
    """One pass, `later` seconds from now (past the backoff of an earlier failure)."""
    inst.write_config(settings_text(url, **settings))
    postd = Postd(inst.paths, load_config(inst), boot_id="b", by_systemd=False, clock=Clock(time.time() + later))
    tally = postd.run_pass()
    postd.close()
    return postd, tally


def test_cainfo_verifies_a_private_ca(user_install, pki):
    with Collector(tls=server_context(pki)) as collector:
        ids = enqueue(user_install.paths.spool_dir, [new_row(record(i)) for i in range(3)])
        # Without the CA the certificate cannot be verified: kept for a retry, not rejected.
        _, tally = run_once(user_install, collector.url)
        assert tally[Counter.RETRIED] >= 1 and tally[Counter.DELIVERED] == 0
        assert queued_ids(user_install.paths.spool_dir) == ids
        _, tally = run_once(user_install, collector.url, later=3600, cainfo=pki / "ca.pem")
        assert tally[Counter.DELIVERED] == 3
        assert sorted(r.record_id for r in collector.accepted()) == sorted(ids)


def test_mutual_tls(user_install, pki):
    with Collector(tls=server_context(pki, require_client_cert=True)) as collector:
        ids = enqueue(user_install.paths.spool_dir, [new_row(record(0))])
        _, tally = run_once(user_install, collector.url, cainfo=pki / "ca.pem")
        assert tally[Counter.DELIVERED] == 0
        assert queued_ids(user_install.paths.spool_dir) == ids
        _, tally = run_once(user_install, collector.url, later=3600, cainfo=pki / "ca.pem",
                            tls_client_cert=pki / "client.pem", tls_client_key=pki / "client.key")
        assert tally[Counter.DELIVERED] == 1
        assert [r.record_id for r in collector.accepted()] == ids


# --- HTTP/2, when the collector offers it ---------------------------------------------------


NGINX_CONF = """
worker_processes 1;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    log_format rec '$server_protocol $connection $http_x_telemetry_record_id $http_classification';
    access_log {d}/access.log rec;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {pki}/server.pem;
        ssl_certificate_key {pki}/server.key;
        location / {{ return 201; }}
    }}
}}
"""


@pytest.fixture
def nginx_h2(pki, tmp_path):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        pytest.skip("nginx is not installed (Debian: nginx-light)")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    # As root, nginx's workers would otherwise switch to nobody, who cannot read the test's files.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf.write_text(user + NGINX_CONF.format(d=tmp_path, port=port, pki=pki))
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp_path), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            if proc.poll() is not None:
                pytest.skip(f"nginx did not start: {proc.stderr.read().decode(errors='replace')[:200]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_until(listening, what="nginx")
        yield f"https://127.0.0.1:{port}/v2/collector", tmp_path / "access.log"
    finally:
        proc.terminate()
        proc.wait(30)


def test_http2_multiplexes_on_one_connection(user_install, pki, nginx_h2):
    url, access_log = nginx_h2
    ids = enqueue(user_install.paths.spool_dir, [new_row(record(i)) for i in range(20)])
    _, tally = run_once(user_install, url, cainfo=pki / "ca.pem", max_in_flight=4)
    assert tally[Counter.DELIVERED] == 20

    def logged():
        lines = access_log.read_text().splitlines() if access_log.exists() else []
        return lines if len(lines) >= 20 else None

    lines = [line.split() for line in wait_until(logged, what="nginx's access log")]
    assert {fields[0] for fields in lines} == {"HTTP/2.0"}
    assert len({fields[1] for fields in lines}) == 1
    assert sorted(fields[2] for fields in lines) == sorted(ids)
