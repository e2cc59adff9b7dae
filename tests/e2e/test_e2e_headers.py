"""Header values that are oversized, not UTF-8 or carry line breaks never reach the
collector as header lines of their own, whichever way they enter: a C probe's frame,
the library, a queue row, the config.  Unusual but valid values arrive whole.

The test collector (tests/integration/http_collector.py) keeps every header line it
received; the reference collector shows what was stored.
"""

from __future__ import annotations

import http_collector as hc
import pytest
from mutators import HOSTILE_VALUES, foreign_headers
from pipeline import Pipeline, ReferenceCollector
from support import METADATA, wait_until
from telemprobd_harness import c_frame, good_headers, send_raw

from telemetry.client import RecordRejected
from telemetry.metadata import Metadata
from telemetry.record import RecordError, create_record

FIELDS = ("classification", "host_type", "build", "kernel_version", "board_name", "cpu_model", "bios_version",
          "system_name", "arch", "event_id", "machine_id")


def raw_value(value: str) -> bytes:
    return value.encode("utf-8", errors="surrogatepass")


def hostile_frames() -> list[tuple[str, bytes]]:
    frames = []
    for field in FIELDS:
        for value in HOSTILE_VALUES:
            if value.strip() == "" and field not in ("classification", "event_id"):
                continue  # blank values are valid in most fields (see the next test)
            headers = good_headers()
            block = b"".join(
                n.encode() + b": " + (raw_value(value) if n == field else v.encode()) + b"\n" for n, v in headers
            )
            frames.append((f"{field}={value[:12]!r}", c_frame(block, b"payload")))
        block = b"".join(n.encode() + b": " + (v.encode() + b"\xff\xfe" if n == field else v.encode()) + b"\n"
                         for n, v in good_headers())
        frames.append((f"{field}=non-UTF-8", c_frame(block, b"payload")))
    return frames


def test_hostile_values_from_a_c_probe_are_refused_and_never_sent(user_install):
    with hc.Collector() as col:
        pipe = Pipeline(user_install, col.url, "rate_limit_enabled=false")
        with pipe:
            replies = {name: send_raw(pipe.socket_path, frame) for name, frame in hostile_frames()}
            canary = send_raw(pipe.socket_path, c_frame(good_headers(), b"canary"))
            assert canary.startswith(b"TM/1 accepted")
            wait_until(lambda: col.accepted(), 30, "the canary delivered")
            pipe.wait_drained(30)
        received = list(col.received)
    accepted = {n: r for n, r in replies.items() if not r.startswith(b"TM/1 invalid")}
    assert not accepted, accepted
    assert len(received) == 1 and received[0].body == b"canary"
    assert not foreign_headers(received)


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nX-Injected: 1", "x" * 600, "\u2028", "\x00"])
def test_the_library_never_sends_a_hostile_value(user_install, value):
    """A program handing the library such values gets an error; none becomes a record."""
    with hc.Collector() as col:
        pipe = Pipeline(user_install, col.url, "rate_limit_enabled=false")
        with pipe:
            with pytest.raises(RecordError):
                create_record(f"org.example/{value}/x", 2, "payload", metadata=METADATA)
            md = Metadata(**{**METADATA.__dict__, "host_type": value})
            record = create_record("org.example/e2e/lib", 2, "payload", metadata=md)
            with pytest.raises(RecordRejected, match="invalid"):
                pipe.client().send(record)
        assert not col.received


def test_unusual_valid_values_arrive_whole_as_one_header_each(user_install, tmp_path):
    """Blank, long (within the collector's limits), non-ASCII and spaced values: each field
    arrives once, whole, and is stored."""
    values = {
        "board_name": "   ",
        "host_type": "Vendor é|Model 中文|v 1.0 " + "h" * 200,
        "cpu_model": "Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz",
        "bios_version": "N22ET37W (1.14 )",
    }
    with ReferenceCollector(tmp_path) as collector:
        pipe = Pipeline(user_install, collector.url, "rate_limit_enabled=false")
        with pipe:
            reply = send_raw(pipe.socket_path, c_frame(good_headers(**values), b"unusual"))
            assert reply.startswith(b"TM/1 accepted"), reply
            record_id = reply.split()[2].decode()
            pipe.wait_drained(30)
            assert collector.rows().get(record_id), f"not stored: {pipe.manager.log('telempostd')[-2000:]}"
            [stored] = [r for r in collector._running.records() if r["payload"] == "unusual"]
    assert stored["board_name"] == ""  # the collector strips surrounding blanks, as HTTP does
    assert stored["machine_type"] == values["host_type"].strip()
    assert stored["cpu_model"] == values["cpu_model"]
    assert stored["bios_version"] == values["bios_version"].strip()
    assert all("\r" not in str(v) and "\n" not in str(v) for v in stored.values())


def test_a_line_break_in_the_config_tidheader_is_refused(user_install):
    user_install.write_config("tidheader=X-Telemetry-TID: 6907c830-eed9-4ce9-81ae-76daf8d88f0f\rX-Injected: 1\n")
    r = user_install.run("telemetry.daemons.postd.main")
    assert r.returncode == 1
    err = r.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
