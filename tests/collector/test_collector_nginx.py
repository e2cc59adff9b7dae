"""The example nginx site (docs/nginx-collector.conf) in front of a real collector: nginx
accepts it as written, and records and reads pass through it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pycurl
import pytest
from collector_support import VALID, header_list, make_pki
from support import free_port, wait_until

from telemetry_collector.launch import start_collector

SITE = Path(__file__).resolve().parents[2] / "docs" / "nginx-collector.conf"

MAIN_CONF = """{user}worker_processes 1;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    access_log off;
    include {d}/site.conf;
}}
"""


def site_for(port: int, upstream: int, pki: Path) -> str:
    """The example as an operator adapts it: this machine's address, port and certificate."""
    text = SITE.read_text()
    for old, new in (("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
                     ("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream};"),
                     ("/etc/ssl/telemetry-collector/server.pem", str(pki / "server.pem")),
                     ("/etc/ssl/telemetry-collector/server.key", str(pki / "server.key"))):
        assert old in text, old
        text = text.replace(old, new)
    return text


def curl(url: str, *, cainfo: str, headers: list[tuple[str, str]] | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, str]]:
    c = pycurl.Curl()
    seen: dict[str, str] = {}

    def header(line: bytes) -> None:
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            seen[name.strip().lower()] = value.strip()

    try:
        c.setopt(pycurl.URL, url)
        c.setopt(pycurl.HTTPHEADER, [f"{n}: {v}".encode() for n, v in headers or []])
        if body is not None:
            c.setopt(pycurl.POSTFIELDS, body)
        c.setopt(pycurl.CAINFO, cainfo)
        c.setopt(pycurl.WRITEFUNCTION, lambda data: None)
        c.setopt(pycurl.HEADERFUNCTION, header)
        c.perform()
        return c.getinfo(pycurl.RESPONSE_CODE), seen
    finally:
        c.close()


def test_example_nginx_site_fronts_the_collector(user_install, tmp_path):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        pytest.skip("nginx is not installed (Debian: nginx-light)")
    pki = make_pki(tmp_path)
    with start_collector(f"sqlite:///{user_install.root}/r.db", env=user_install.env,
                         log_path=str(user_install.root / "c.log"), args=["--trusted-proxy", "127.0.0.1"]) as c:
        port = free_port()
        (tmp_path / "site.conf").write_text(site_for(port, int(c.url.rsplit(":", 1)[1]), pki))
        # As root, nginx's workers would otherwise switch to nobody, who cannot read the test's files.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (tmp_path / "nginx.conf").write_text(MAIN_CONF.format(user=user, d=tmp_path))
        command = [nginx, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)]
        checked = subprocess.run([*command, "-t"], capture_output=True)
        assert checked.returncode == 0, checked.stderr.decode(errors="replace")
        proc = subprocess.Popen([*command, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            def listening() -> bool:
                assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[:300]
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return True
                except OSError:
                    return False

            wait_until(listening, what="nginx")
            base, ca = f"https://127.0.0.1:{port}", str(pki / "ca.pem")
            assert curl(base + "/v2/collector", cainfo=ca, headers=header_list(VALID), body=b"via nginx")[0] == 201
            status, headers = curl(base + "/api/records", cainfo=ca)
            assert status == 401 and "Bearer" in headers["www-authenticate"]
            assert curl(base + "/api/records", cainfo=ca, headers=list(c.auth_headers.items()))[0] == 200
            assert curl(base + "/nothing", cainfo=ca)[0] == 404
            big = curl(base + "/v2/collector", cainfo=ca, headers=header_list(VALID), body=b"x" * (2 << 20))
            assert big[0] == 413
        finally:
            proc.terminate()
            proc.wait(30)
        assert [r["payload"] for r in c.records()] == ["via nginx"]
