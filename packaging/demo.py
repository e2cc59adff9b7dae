"""`make demo`: the whole pipeline, end to end, in user mode, in a throwaway directory.

It shows the record this machine produces, starts the reference collector and the two
daemons (through `telemctl --user`), sends records with the probes, and shows where they
ended up: `telemctl journal`, `telemctl status` and the collector's own query API.
Nothing outside the temporary directory is touched; everything is stopped at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from telemetry.record import create_record
from telemetry.wire import encode_frame

BIN = os.path.join(sys.prefix, "bin")


def program(name: str) -> list[str]:
    path = os.path.join(BIN, name)
    if not os.access(path, os.X_OK):
        raise SystemExit(f"demo: {path} is missing; run 'make venv' first")
    return [path]


def run(env: dict[str, str], *argv: str, show: bool = True, check: bool = True) -> subprocess.CompletedProcess:
    print(f"\n$ {' '.join(argv)}", flush=True)
    proc = subprocess.run(program(argv[0]) + list(argv[1:]), env=env, capture_output=True, text=True)
    if show:
        sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    sys.stdout.flush()
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: {argv[0]} exited with status {proc.returncode}")
    return proc


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def wait_until_delivered(env: dict[str, str], expected: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        out = subprocess.run(program("telemctl") + ["--user", "status", "--json"], env=env,
                             capture_output=True, text=True)
        if out.returncode == 0:
            status = json.loads(out.stdout)
            counters = status.get("counters", {}).get("telempostd", {})
            if counters.get("delivered", 0) >= expected:
                return status
        time.sleep(0.2)
    raise SystemExit(f"demo: records were not delivered within {timeout:.0f} s; status: {status}")


def show_local_record() -> None:
    record = create_record("org.clearlinux/hello/world", 1, "hello\n")
    section("The record the library builds on this machine (Version 4 headers, then the payload)")
    sys.stdout.write(record.header_block().decode())
    sys.stdout.write(record.payload.decode())
    frame = encode_frame(record.header_block(), record.payload)
    print(f"-- socket frame: {len(frame)} bytes, header_size {len(record.header_block())}, "
          f"first bytes {frame[:8].hex(' ')}")


def main() -> int:
    show_local_record()
    from telemetry_collector.launch import start_collector

    root = tempfile.mkdtemp(prefix="telem-demo-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "TELEMETRY_"))}
    for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_STATE_HOME", "state"),
                     ("XDG_CACHE_HOME", "cache"), ("XDG_RUNTIME_DIR", "run")):
        env[var] = os.path.join(root, sub)
        os.makedirs(env[var], mode=0o700)
    env["TELEMETRY_MODE"] = "user"
    for var in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID"):
        env.pop(var, None)
    collector = None
    started = False
    try:
        section(f"A user-mode installation in {root}, and a reference collector")
        collector = start_collector(f"sqlite:///{root}/collector.db", env=env,
                                    log_path=os.path.join(root, "collector.log"))
        print(f"collector listening on {collector.url}")
        conf_dir = os.path.join(env["XDG_CONFIG_HOME"], "telemetrics")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, "telemetrics.conf"), "w") as f:
            f.write(f"[settings]\nserver={collector.collector_url}\nrecord_retention_enabled=true\n")
        print(f"telemetrics.conf: server={collector.collector_url}, record_retention_enabled=true")

        section("Opt in and start the daemons")
        run(env, "telemctl", "--user", "start", check=False)  # refused: not opted in yet
        run(env, "telemctl", "--user", "opt-in")
        started = True  # stop whatever part of it started, even if start fails
        run(env, "telemctl", "--user", "start")
        run(env, "telemctl", "--user", "is-active")

        section("Send records with the probes")
        run(env, "hprobe")
        run(env, "hprobe", "-H", "-l", "-u")
        run(env, "telem-record-gen", "-c", "org.example/demo/hello", "-s", "2",
            "-p", "a record from telem-record-gen")
        run(env, "telem-record-gen", "-c", "not-a-classification", "-p", "x", check=False)

        section("Delivered: the journal (telemctl journal -V), with payloads (-i)")
        wait_until_delivered(env, 3)
        run(env, "telemctl", "--user", "journal", "-V")
        run(env, "telemctl", "--user", "journal", "-i", "-c", "org.example/*")

        section("Status and counters")
        run(env, "telemctl", "--user", "status")

        section("What the collector stored (GET /api/records)")
        for rec in collector.records():
            print(f"  id {rec['id']}: {rec['classification']:<32} severity {rec['severity']} "
                  f"machine {rec['machine_id']} arch {rec['arch']} event {rec['event_id']}")
        print(f"  collector stats: {json.dumps(collector.stats())}")
    finally:
        section("Stop everything")
        if started:
            run(env, "telemctl", "--user", "stop", check=False)
            run(env, "telemctl", "--user", "is-active", check=False)
        if collector is not None:
            collector.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
