"""What the common paths load, read from the real programs' `-X importtime` report
(PYTHONPROFILEIMPORTTIME): hprobe and telem-record-gen sending a record and the library's
send import neither click (it reads only help and mistaken command lines) nor logging
(nothing to say) nor typing (annotations only: see telemetry/__init__.py); the daemons,
started from their console scripts and idle, no click, no typing, no inspect (dataclasses
imports it: telemetry.entry defers it), no platformdirs in user mode, telemprobd no libsystemd
when systemd did not start it, telempostd no pycurl before its first delivery.  Functional
facts, never timings or sizes (bench/probe_startup.py and bench/daemon_memory.py print those)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from postd_support import settings_text
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


def console_script(program: str) -> list[str]:
    """The command running `program` as its console script does (telemetry.entry)."""
    code = (f"import sys\nsys.argv[0] = {program!r}\n"
            f"from telemetry.entry import {entry.function_name(program)} as main\nsys.exit(main())\n")
    return [sys.executable, "-c", code]


def run_program(inst, program: str, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`program` as its console script runs it, with its imports reported."""
    r = subprocess.run([*console_script(program), *args], env={**inst.env, **PROFILE},
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


# Loaded by neither daemon while idle, in user mode: typing, and what it builds (0.8 MiB);
# inspect, ast and dis (1 MiB), which dataclasses imports for the __doc__ of a dataclass
# without a docstring; platformdirs and what it imports (tempfile, shutil, random, the
# compression modules: 1.2 MiB); hashlib, which maps libcrypto (3 MiB): only an import of
# the C client's files needs it.
IDLE_DAEMON_KEEPS_OUT = {"click", "typing", "inspect", "ast", "dis", "platformdirs", "tempfile", "shutil",
                         "bz2", "lzma", "hashlib"}


def test_telemprobd_idle_loads_no_click_typing_inspect_platformdirs_or_libsystemd(user_install):
    """As its console script: telemetry.entry defers inspect before anything imports it."""
    with Probd(user_install, env=PROFILE, command=console_script("telemprobd")) as probd:
        probd.stop()
    modules = imported(probd.log())
    assert "telemetry.daemons.probd.ingest" in modules
    tops = {m.split(".")[0] for m in modules}
    assert not ({"systemd"} | IDLE_DAEMON_KEEPS_OUT) & tops, sorted(tops & ({"systemd"} | IDLE_DAEMON_KEEPS_OUT))


def test_telempostd_idle_loads_no_click_typing_inspect_platformdirs_or_pycurl(user_install):
    user_install.opt_in()
    user_install.write_config(settings_text(f"http://127.0.0.1:{free_port()}/v2/collector"))
    log_path = user_install.root / "telempostd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(console_script("telempostd"), env={**user_install.env, **PROFILE}, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "delivering" in log_path.read_text(errors="replace"), what="telempostd started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    modules = imported(log_path.read_text(errors="replace"))
    assert "telemetry.daemons.postd.core" in modules
    tops = {m.split(".")[0] for m in modules}
    assert not ({"pycurl"} | IDLE_DAEMON_KEEPS_OUT) & tops, sorted(tops & ({"pycurl"} | IDLE_DAEMON_KEEPS_OUT))
    assert os.path.exists(os.path.join(queue_dir(user_install.paths.spool_dir), QUEUE_DB))


def test_a_deferred_module_is_the_real_one_at_its_first_use():
    """The stand-in answers as the module does, and the real module takes its place."""
    code = ("import sys\n"
            "from telemetry.entry import defer_unused_modules\n"
            "defer_unused_modules(('inspect',))\n"
            "import dataclasses, importlib.util, inspect\n"
            "assert importlib.util.find_spec('inspect').name == 'inspect' and 'ast' not in sys.modules\n"
            "@dataclasses.dataclass\n"
            "class NoDoc:\n"
            "    x: int\n"
            "assert 'ast' in sys.modules\n"
            "print(NoDoc.__doc__, inspect.isclass(NoDoc), sys.modules['inspect'].signature(NoDoc))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "NoDoc(x: int) True (x: int) -> None\n"), r.stderr
