"""What the common paths load, read from the real programs' `-X importtime` report
(PYTHONPROFILEIMPORTTIME): hprobe and telem-record-gen sending a record and the library's
send import neither click (it reads only help and mistaken command lines) nor logging
(nothing to say) nor typing (annotations only: see telemetry/__init__.py); the daemons,
started and idle, no click, telemprobd no libsystemd when systemd did not start it and no
typing, telempostd no pycurl before its first delivery.  Functional
facts, never timings (bench/probe_startup.py prints those)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from postd_support import Daemon, settings_text
from support import free_port, wait_until
from telemprobd_harness import Probd, rows

from telemetry import entry
from telemetry.daemons.store.queue import QUEUE_DB, queue_dir

PROFILE = {"PYTHONPROFILEIMPORTTIME": "1"}


def imported(report: str) -> set[str]:
    """The modules named in an importtime report (the lines of anything else are skipped)."""
    names = set()
    for line in report.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[0].strip().isdigit():
            names.add(parts[2].strip())
    return names


def loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


def run_program(inst, program: str, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`program` as its console script runs it (telemetry.entry), with its imports reported."""
    code = (f"import sys\nsys.argv[0] = {program!r}\n"
            f"from telemetry.entry import {entry.function_name(program)} as main\nsys.exit(main())\n")
    r = subprocess.run([sys.executable, "-c", code, *args], env={**inst.env, **PROFILE},
                       capture_output=True, text=True, timeout=60)
    report = r.stderr
    r.stderr = "\n".join(line for line in report.splitlines() if not line.startswith("import time:"))
    return r, imported(report)


@pytest.mark.parametrize(("program", "args"), [
    ("hprobe", ()),
    ("hprobe", ("-Hlu", "--user")),
    ("telem-record-gen", ("-c", "org.example/startup/imports", "-p", "hello", "-s", "2")),
])
def test_a_probe_sending_a_record_loads_no_click_logging_or_typing(user_install, program, args):
    with Probd(user_install) as probd:
        r, modules = run_program(user_install, program, *args)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        assert len(rows(probd)) == 1
    assert "telemetry.client" in modules  # the report is real
    assert not {"click", "logging", "typing"} & {m.split(".")[0] for m in modules}, sorted(modules)


def test_help_and_a_mistake_are_click_s_and_stay_one_line(user_install):
    r, modules = run_program(user_install, "hprobe", "--help")
    assert r.returncode == 0 and r.stdout.startswith("hprobe: Usage\n") and loaded(modules, "click")
    r, modules = run_program(user_install, "telem-record-gen", "-c")
    assert r.returncode == 1 and loaded(modules, "click")
    assert r.stderr.splitlines() == ["telem-record-gen: Option '-c' requires an argument. "
                                     "(see 'telem-record-gen --help')"]


def test_a_probe_with_something_to_say_logs_it(user_install, tmp_path):
    """Not opted in: the probe's one log line, through the logging set up when it is said."""
    r, modules = run_program(user_install, "hprobe")
    assert r.returncode == 0 and loaded(modules, "logging") and not loaded(modules, "click")
    assert r.stderr.startswith("hprobe: INFO: not opted in to telemetry"), r.stderr


def test_the_library_s_send_loads_no_click_logging_or_typing(user_install):
    code = ("import telemetry\n"
            "ack = telemetry.send(telemetry.create_record('org.example/startup/lib', 1, 'hi'))\n"
            "print(ack.status.value)\n")
    with Probd(user_install) as probd:
        r = subprocess.run([sys.executable, "-c", code], env={**user_install.env, **PROFILE},
                           capture_output=True, text=True, timeout=60)
        assert (r.returncode, r.stdout) == (0, "accepted\n"), r.stderr
        assert len(rows(probd)) == 1
    modules = imported(r.stderr)
    assert "telemetry.wire" in modules  # telemetry.client itself comes through importlib: not reported
    assert not {"click", "logging", "typing"} & {m.split(".")[0] for m in modules}, sorted(modules)


def test_telemprobd_idle_loads_no_click_no_typing_and_no_libsystemd_outside_systemd(user_install):
    with Probd(user_install, env=PROFILE) as probd:
        probd.stop()
    modules = imported(probd.log())
    assert "telemetry.daemons.probd.ingest" in modules
    # hashlib maps libcrypto (3 MiB): only an import of the C client's files needs it
    assert not {"click", "systemd", "typing", "hashlib"} & {m.split(".")[0] for m in modules}, sorted(modules)


def test_telempostd_idle_loads_no_click_and_no_pycurl(user_install):
    user_install.opt_in()
    user_install.write_config(settings_text(f"http://127.0.0.1:{free_port()}/v2/collector"))
    with Daemon(user_install, env=PROFILE) as d:
        wait_until(lambda: "delivering" in d.log(), what="telempostd started")
        assert d.stop() == 0
    modules = imported(d.log())
    assert "telemetry.daemons.postd.core" in modules
    assert not loaded(modules, "click") and not loaded(modules, "pycurl"), sorted(modules)
    assert not loaded(modules, "hashlib"), sorted(modules)
    assert os.path.exists(os.path.join(queue_dir(user_install.paths.spool_dir), QUEUE_DB))
