"""Shared by the collector tests: a valid record, HTTP helpers, PostgreSQL, certificates."""

from __future__ import annotations

import dataclasses
import http.client
import json
import shutil
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import support

from telemetry import headers as H
from telemetry.config import DEFAULT_TID
from telemetry_collector.model import NewRecord
from telemetry_collector.tempdb import TemporaryPostgres, TempPostgresError

TID = DEFAULT_TID
NOW = 1_800_000_000  # reception time of stored test records

# A version-4 record as the original sends it (contract §2), by the record's field names.
VALID: dict[str, str] = {
    H.RECORD_FORMAT_VERSION: "4",
    H.CLASSIFICATION: "org.clearlinux/hello/world",
    H.SEVERITY: "1",
    H.MACHINE_ID: "6a1f0e3c2b7d4e8f9a0b1c2d3e4f5a6b",
    H.CREATION_TIMESTAMP: "1554000000",
    H.ARCH: "x86_64",
    H.HOST_TYPE: "QEMU|Standard PC (i440FX + PIIX, 1996)|pc-i440fx-3.1",
    H.BUILD: "28790",
    H.KERNEL_VERSION: "5.0.5-726.native",
    H.PAYLOAD_FORMAT_VERSION: "1",
    H.SYSTEM_NAME: "clear-linux-os",
    H.BOARD_NAME: "blank|blank",
    H.CPU_MODEL: "Intel(R) Core(TM) i7-7600U CPU @ 2.80GHz",
    H.BIOS_VERSION: "1.16.1-1",
    H.EVENT_ID: "5de9de8d5f3c6a7d445d75ba01cc3322",
}


def record_fields(**changes: str | None) -> dict[str, str]:
    """VALID with some fields changed; None removes one."""
    fields = dict(VALID)
    for k, v in changes.items():
        if v is None:
            fields.pop(k, None)
        else:
            fields[k] = v
    return fields


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def message(self) -> str:
        return self.json()["message"]


def http_request(url: str, method: str, path: str, headers: list[tuple[str, str]] | None = None,
                 body: bytes | None = None, timeout: float = 30.0, *, chunks: list[bytes] | None = None) -> Answer:
    """One request on a new connection; header values go out as UTF-8; `chunks`: a chunked body."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers or []:
            conn.putheader(name, value.encode("utf-8"))
        if chunks is not None:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for chunk in chunks:
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            conn.send(b"0\r\n\r\n")
        else:
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        response = conn.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def header_list(fields: dict[str, str], *, tid: str | None = TID, record_id: str | None = None,
                content_type: str | None = "application/text",
                extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    out = [(H.HTTP_HEADERS[k], v) for k, v in fields.items()]
    if tid is not None:
        out.append((H.TID_HEADER, tid))
    if record_id is not None:
        out.append((H.RECORD_ID_HEADER, record_id))
    if content_type is not None:
        out.append(("Content-Type", content_type))
    return out + (extra or [])


def post_headers(url: str, fields: dict[str, str], payload: bytes = b"hello\n", **kw) -> Answer:
    """The headers generation: record fields as HTTP headers, payload as the body."""
    extra = kw.pop("extra", None)
    return http_request(url, "POST", "/v2/collector", header_list(fields, extra=extra, **kw), payload)


def post_json(url: str, fields: dict[str, str], payload: str = "hello\n", *, tid: str | None = TID,
              record_id: str | None = None, extra: list[tuple[str, str]] | None = None) -> Answer:
    """The json generation: one object of the fields plus payload."""
    doc = {**fields, "payload": payload}
    headers = [("Content-Type", "application/json")]
    if tid is not None:
        headers.append((H.TID_HEADER, tid))
    if record_id is not None:
        headers.append((H.RECORD_ID_HEADER, record_id))
    return http_request(url, "POST", "/v2/collector", headers + (extra or []),
                        json.dumps(doc, ensure_ascii=False).encode())


@contextmanager
def temporary_postgres() -> Iterator[TemporaryPostgres]:
    """A private PostgreSQL server, or a skip saying why there is none."""
    try:
        pg = TemporaryPostgres(durable=False).start()
    except TempPostgresError as e:
        pytest.skip(f"no PostgreSQL server for this test: {e}")
    try:
        yield pg
    finally:
        pg.stop()


def make_pki(directory: Path) -> Path:
    """support.make_pki, or a skip when the openssl command is not installed."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    return support.make_pki(directory)


def new_record(i: int = 0, **changes) -> NewRecord:
    base = NewRecord(
        record_format_version=4, severity=1 + i % 4, classification="org.clearlinux/hello/world",
        machine_id=f"{i:032x}", ts_capture=1_554_000_000 + i, arch="x86_64", host_type="blank|blank|blank",
        build="28790", kernel_version="6.1.0-18-amd64", payload_format_version=1, system_name="clear-linux-os",
        board_name="b", cpu_model="c", bios_version="v", event_id="0" * 32, external=False,
        payload=f"payload {i}\n", ts_reception=NOW, record_id=None,
    )
    return dataclasses.replace(base, **changes)


class Tricklers:
    """Connections from several loopback addresses that send a request head one byte at a
    time and never finish it."""

    HEAD = b"POST /v2/collector HTTP/1.1\r\nHost: collector\r\nX-Slow: " + b"a" * 4000

    def __init__(self, url: str, count: int, addresses: int, interval: float = 0.5):
        parts = urllib.parse.urlsplit(url)
        self.socks: list[socket.socket] = []
        for i in range(count):
            s = socket.socket()
            s.bind((f"127.0.0.{2 + i % addresses}", 0))
            s.connect((parts.hostname, parts.port))
            s.setblocking(False)
            self.socks.append(s)
        self.sent = [0] * count
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for i, s in enumerate(self.socks):
                if self.sent[i] < len(self.HEAD):
                    try:
                        s.send(self.HEAD[self.sent[i]:self.sent[i] + 1])
                        self.sent[i] += 1
                    except OSError:
                        pass
            self._stop.wait(self.interval)

    def still_open(self) -> int:
        """Connections the server has not closed (nothing to read and no EOF)."""
        n = 0
        for s in self.socks:
            try:
                if s.recv(1, socket.MSG_PEEK) == b"":
                    continue
            except BlockingIOError:
                n += 1
                continue
            except OSError:
                continue
        return n

    def answers(self) -> list[bytes]:
        out = []
        for s in self.socks:
            try:
                out.append(s.recv(200))
            except OSError:
                out.append(b"")
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def close(self) -> None:
        self.stop()
        for s in self.socks:
            s.close()
