"""telemctl driven as a user would, against a real user-mode pipeline.

opt-in → start (telempostd and telemprobd as background processes) → records sent with
hprobe and the library → delivered to an HTTP collector on 127.0.0.1 → `journal` with
each filter → `status` counters → stop → is-active says inactive; then every misuse.
System-mode commands are only exercised where they stop before touching the machine:
the root check (run with a dropped uid) and the missing-systemd check.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from http_collector import ACCEPT, HANG, Collector, status
from support import free_port, wait_until

from telemetry.client import Client
from telemetry.daemons import MODULES
from telemetry.daemons.store import journal as journal_mod
from telemetry.record import create_record

CTL = "telemetry.daemons.ctl.main"
HAVE_DAEMONS = all(
    importlib.util.find_spec(MODULES[d]) is not None for d in ("telemprobd", "telempostd")
)
HAVE_HPROBE = importlib.util.find_spec("telemetry.probes.hprobe") is not None
needs_daemons = pytest.mark.skipif(not HAVE_DAEMONS, reason="telemprobd/telempostd are not installed")

EVENT_ID = "0123456789abcdef0123456789abcdef"
LINE = re.compile(
    r"^(?P<cls>\S+)\s+ \w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ (?P<rid>[0-9a-f]{32}) "
    r"(?P<eid>[0-9a-f]{32}) (?P<bid>[0-9a-f-]{36})$"
)


def ctl(inst, *args, env=None, **kw) -> subprocess.CompletedProcess:
    return inst.run(CTL, "--user", *args, env=env, **kw)


def out(done) -> str:
    return done.stdout.decode()


def err(done) -> str:
    return done.stderr.decode()


def assert_one_line_error(done, code, fragment):
    text = err(done)
    assert done.returncode == code, (done.returncode, text, out(done))
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text
    assert fragment in text, text


@pytest.fixture
def collector():
    """201 to every POST: the records carry this machine's own metadata, whatever it is."""
    with Collector() as c:
        yield c


@pytest.fixture
def pipeline(user_install, collector):
    """Opted in, configured for the local collector; daemons stopped again afterwards."""
    user_install.write_config(f"server={collector.url}\nrecord_retention_enabled=true\n")
    yield user_install
    ctl(user_install, "stop")


def pids(inst) -> dict[str, int]:
    run = Path(inst.paths.run_dir)
    return {name: int((run / f"{name}.pid").read_text()) for name in ("telemprobd", "telempostd")
            if (run / f"{name}.pid").exists()}


def send_records(inst) -> str:
    """Two records from hprobe (hello and heartbeat) and one from the library; its record id."""
    if HAVE_HPROBE:
        for args in ((), ("-H",)):
            done = inst.run("telemetry.probes.hprobe", *args)
            assert done.returncode == 0, err(done)
    else:
        client = Client(inst.paths)
        client.send(create_record("org.clearlinux/hello/world", 1, "hello\n"))
        client.send(create_record("org.clearlinux/heartbeat/ping", 1, "hello\n"))
    ack = Client(inst.paths).send(create_record("org.example/telemctl/test", 2, "payload ✓\n", event_id=EVENT_ID))
    assert ack.record_id
    return ack.record_id


def journal_lines(inst, *args) -> list[str]:
    done = ctl(inst, "journal", *args)
    assert done.returncode == 0, err(done)
    assert err(done) == ""
    return out(done).splitlines()


@needs_daemons
def test_pipeline_end_to_end(pipeline, collector):
    inst = pipeline
    done = ctl(inst, "opt-in")
    assert done.returncode == 0 and "Opted in" in out(done)
    done = ctl(inst, "opt-in")
    assert done.returncode == 0 and err(done).strip() == "Already opted in. Nothing to do."

    done = ctl(inst, "start")
    assert done.returncode == 0, err(done)
    assert re.search(r"^telempostd: started \(pid \d+\)$", out(done), re.M), out(done)
    assert re.search(r"^telemprobd: started \(pid \d+\)$", out(done), re.M), out(done)
    running = pids(inst)
    assert set(running) == {"telemprobd", "telempostd"}
    assert all(psutil.pid_exists(p) for p in running.values())

    done = ctl(inst, "is-active")
    assert (done.returncode, out(done)) == (0, "telemprobd : active\ntelempostd : active\n")
    done = ctl(inst, "start")
    assert done.returncode == 0 and out(done).count("already running") == 2
    assert pids(inst) == running

    record_id = send_records(inst)
    wait_until(lambda: len(journal_mod.query(inst.paths.journal_dir)) >= 3, 60, "3 journal entries")
    assert len(collector.received) == 3

    # The original's layout, oldest first.
    lines = journal_lines(inst)
    assert len(lines) == 3
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [m["cls"] for m in parsed] == ["org.clearlinux/hello/world", "org.clearlinux/heartbeat/ping",
                                          "org.example/telemctl/test"]
    boot_id = parsed[0]["bid"]
    assert boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:36]

    # Every filter of the original.
    (only,) = journal_lines(inst, "-r", record_id)
    assert LINE.match(only)["rid"] == record_id and LINE.match(only)["eid"] == EVENT_ID
    assert journal_lines(inst, "--record_id", record_id.upper()) == [only]
    assert journal_lines(inst, "-e", EVENT_ID) == [only]
    assert journal_lines(inst, "-c", "org.example/telemctl/test") == [only]
    assert journal_lines(inst, "-c", "org.example/*") == [only]
    assert journal_lines(inst, "-c", "org.clearlinux/*") == lines[:2]
    assert journal_lines(inst, "--classification", "org.clearlinux/heartbeat/*") == lines[1:2]
    assert journal_lines(inst, "-c", "org.clearlinux/hello/world") == lines[:1]
    assert journal_lines(inst, "-b", boot_id) == lines
    assert journal_lines(inst, "-b", "00000000-0000-0000-0000-000000000000") == []
    assert journal_lines(inst, "-c", "org.clearlinux/*", "-e", EVENT_ID) == []
    assert journal_lines(inst, "-r", "f" * 32) == []

    verbose = journal_lines(inst, "-V")
    assert verbose[0].split() == ["Classification", "Time", "stamp", "Record", "ID", "Event", "ID", "Boot", "ID"]
    assert verbose[1:-1] == lines and verbose[-1] == "Total records: 3"
    assert journal_lines(inst, "-V", "-r", "f" * 32) == [verbose[0], "Total records: 0"]

    # -i: the retained payload follows its line.
    assert journal_lines(inst, "-i", "-r", record_id) == [only, "payload ✓"]
    # Extras: newest N, outcome, JSON.
    assert journal_lines(inst, "-n", "1") == lines[2:]
    assert journal_lines(inst, "--outcome", "rejected") == []
    assert journal_lines(inst, "-o", "delivered") == lines
    done = ctl(inst, "journal", "--json", "-i", "-c", "org.example/*")
    (obj,) = json.loads(out(done))
    assert obj["record_id"] == record_id and obj["event_id"] == EVENT_ID
    assert obj["outcome"] == "delivered" and obj["http_status"] == 201
    assert obj["payload"] == "payload ✓\n" and obj["boot_id"] == boot_id

    # status: daemons, queue, counters.
    done = ctl(inst, "status", "--json")
    assert done.returncode == 0, err(done)
    st = json.loads(out(done))
    assert st["mode"] == "user" and st["opted_in"] is True
    assert st["daemons"]["telemprobd"]["state"] == "active"
    assert {n: d["pid"] for n, d in st["daemons"].items()} == running
    assert st["socket_path"] == inst.paths.socket_path
    assert st["queue"]["records"] == 0 and st["queue"]["bytes"] == 0
    assert st["queue"]["cap_bytes"] == 5120 * 1024 and st["queue"]["next_retry"] is None
    assert st["counters"]["telemprobd"]["received"] == 3
    assert st["counters"]["telemprobd"]["staged"] == 3
    assert st["counters"]["telemprobd"]["rejected:invalid"] == 0
    assert st["counters"]["telempostd"]["delivered"] == 3
    assert st["counters"]["telempostd"]["rejected"] == 0
    text = out(ctl(inst, "status"))
    assert re.search(rf"^telemprobd:\s+active \(pid {running['telemprobd']}\)", text, re.M), text
    assert re.search(r"^\s+(telempostd)?\s+delivered\s+3$", text, re.M), text

    # stop → inactive.
    done = ctl(inst, "stop")
    assert done.returncode == 0, err(done)
    assert out(done) == (f"telemprobd: stopped (pid {running['telemprobd']})\n"
                         f"telempostd: stopped (pid {running['telempostd']})\n")
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in running.values())
    done = ctl(inst, "is-active")
    assert (done.returncode, out(done)) == (3, "telemprobd : inactive\ntelempostd : inactive\n")
    assert ctl(inst, "is-active", "--quiet").stdout == b""
    done = ctl(inst, "stop")
    assert done.returncode == 0 and out(done).count("not running") == 2
    assert json.loads(out(ctl(inst, "status", "--json")))["daemons"]["telempostd"]["state"] == "inactive"

    # The journal outlives the daemons; opt-out removes it and everything else kept.
    assert journal_lines(inst) == lines
    done = ctl(inst, "opt-out")
    assert done.returncode == 0, err(done)
    for path in (inst.paths.spool_dir, inst.paths.journal_dir, inst.paths.machine_id_file, inst.paths.opt_in_file):
        assert not os.path.exists(path), path
    assert os.path.exists(inst.paths.config_file)
    assert journal_lines(inst) == []
    done = ctl(inst, "opt-out")
    assert done.returncode == 0 and err(done).strip() == "Already opted out. Nothing to do."
    assert_one_line_error(ctl(inst, "start"), 1, "Opt in to telemetry first.")


@needs_daemons
def test_dead_daemon_shows_failed_and_restart_recovers(pipeline):
    inst = pipeline
    inst.opt_in()
    assert ctl(inst, "start").returncode == 0
    first = pids(inst)
    os.kill(first["telemprobd"], signal.SIGKILL)
    wait_until(lambda: ctl(inst, "is-active").returncode == 3, 60, "is-active to notice the kill")
    done = ctl(inst, "is-active")
    assert out(done) == "telemprobd : failed\ntelempostd : active\n"
    assert json.loads(out(ctl(inst, "status", "--json")))["daemons"]["telemprobd"] == {
        "state": "failed", "pid": None, "detail": f"log {inst.paths.state_dir}/telemprobd.log"}

    done = ctl(inst, "restart")
    assert done.returncode == 0, err(done)
    assert "telemprobd: not running\n" in out(done) and "telempostd: stopped" in out(done)
    second = pids(inst)
    assert second["telempostd"] != first["telempostd"]
    assert ctl(inst, "is-active").returncode == 0
    # The restarted pipeline takes records.
    Client(inst.paths).send(create_record("org.example/telemctl/again", 1, "x"))


@needs_daemons
@pytest.mark.parametrize("bad, fragment", [
    ("server=not a url", "server 'not a url' must be an http:// or https:// URL"),
    ("record_burst_limit=abc", "record_burst_limit: 'abc' is not an integer"),
    ("tidheader=no colon", "tidheader must be a header line"),
])
def test_restart_with_a_bad_config_leaves_the_daemons_running(pipeline, collector, bad, fragment):
    """Checked before anything is stopped: one line, both daemons still serving."""
    inst = pipeline
    inst.opt_in()
    assert ctl(inst, "start").returncode == 0
    running = pids(inst)
    client = Client(inst.paths)  # reads the good file
    inst.write_config(f"server={collector.url}\n{bad}\n")
    for command, refusing in (("restart", "not restarting, the running daemons are left as they are"),
                              ("reload", "not reloading, the daemons keep their current settings"),
                              ("start", "not starting")):
        done = ctl(inst, command)
        assert_one_line_error(done, 1, f"telemctl: {refusing}: ")
        assert fragment in err(done) and done.stdout == b""
    assert pids(inst) == running and ctl(inst, "is-active").returncode == 0
    client.send(create_record("org.example/telemctl/still", 1, "x"))
    collector.wait_for(1)


@needs_daemons
def test_unknown_keys_are_warnings_listed_by_status_and_restart_goes_on(pipeline, collector):
    """As the C client and systemd: an unknown key (an obsolete one) is ignored, and said
    with its file and line, by telemctl and in the daemons' logs."""
    inst = pipeline
    inst.opt_in()
    conf = inst.write_config(f"server={collector.url}\nobsolete_key=1\n")
    notice = f"{conf}:3: obsolete_key: unknown key, ignored (telemetrics.conf(5) lists the keys)"
    done = ctl(inst, "start")
    assert done.returncode == 0 and err(done) == f"telemctl: warning: {notice}\n"
    for name in ("telemprobd", "telempostd"):
        log = Path(inst.paths.state_dir, f"{name}.log").read_text()
        assert f"WARNING: {notice}" in log, log
    st = json.loads(out(ctl(inst, "status", "--json")))
    assert st["config_notices"] == [{"kind": "unknown-key", "path": str(conf), "line": 3,
                                     "text": "obsolete_key: unknown key, ignored (telemetrics.conf(5) lists the keys)"}]
    assert f"  ignored:   {notice}" in out(ctl(inst, "status"))
    running = pids(inst)
    done = ctl(inst, "restart")
    assert done.returncode == 0 and f"warning: {notice}" in err(done)
    assert pids(inst).keys() == running.keys() and pids(inst) != running


@needs_daemons
def test_user_mode_daemons_show_by_name_and_log_with_timestamps(pipeline):
    inst = pipeline
    inst.opt_in()
    assert ctl(inst, "start").returncode == 0
    for name, pid in pids(inst).items():
        proc = psutil.Process(pid)
        assert proc.name() == name  # comm: what ps -e, top and pgrep show
        assert os.path.basename(proc.cmdline()[1]) == name, proc.cmdline()  # ps aux: python …/telemprobd
        log = Path(inst.paths.state_dir, f"{name}.log").read_text().splitlines()
        assert log and all(re.match(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} {name}: [A-Z]+: ", line)
                           for line in log), log


@needs_daemons
def test_reload_sends_sighup_to_the_running_daemons(pipeline, collector):
    inst = pipeline
    inst.opt_in()
    done = ctl(inst, "reload")
    assert (done.returncode, out(done)) == (0, "telemprobd: not running\ntelempostd: not running\n")
    assert ctl(inst, "start").returncode == 0
    running = pids(inst)
    inst.write_config(f"server={collector.url}\nlog_level=debug\n")
    done = ctl(inst, "reload")
    assert done.returncode == 0, err(done)
    assert out(done) == (f"telemprobd: asked to reload (SIGHUP) (pid {running['telemprobd']})\n"
                         f"telempostd: asked to reload (SIGHUP) (pid {running['telempostd']})\n")
    for name in ("telemprobd", "telempostd"):
        wait_until(lambda n=name: "configuration reloaded" in Path(inst.paths.state_dir, f"{n}.log").read_text(),
                   30, f"{name} to reload")
    assert pids(inst) == running


@needs_daemons
def test_stop_says_what_it_waits_for(pipeline, collector):
    """telempostd finishes the request in flight before it exits: a stop that takes more
    than a second says so instead of sitting silent."""
    inst = pipeline
    inst.opt_in()
    assert ctl(inst, "start").returncode == 0
    running = pids(inst)
    collector.answer(HANG)
    Client(inst.paths).send(create_record("org.example/telemctl/slow", 1, "x"))
    assert collector.wait_hanging(30)
    stop = subprocess.Popen([sys.executable, "-m", CTL, "--user", "stop"], env=inst.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = stop.stderr.readline().decode()
        assert line == (f"telemctl: telempostd (pid {running['telempostd']}): waiting for it to exit; it "
                        "finishes the requests in flight to the collector (killed after 20 s)\n")
    finally:
        collector.release()
        assert stop.wait(60) == 0
        stop.stdout.close()
        stop.stderr.close()


@needs_daemons
def test_status_says_why_delivery_waits_and_a_restart_drops_the_old_wait(user_install):
    """The collector asks for an hour's wait: status shows the pause, its reason and the
    error.  Restarted (the collector fine again), telempostd does not keep that wait."""
    inst = user_install
    with Collector() as col:
        col.answer(status(503, retry_after="3600", message="maintenance"))
        inst.write_config(f"server={col.url}\n")
        inst.opt_in()
        try:
            assert ctl(inst, "start").returncode == 0
            Client(inst.paths).send(create_record("org.example/telemctl/wait", 1, "x"))

            def paused():
                st = json.loads(out(ctl(inst, "status", "--json")))
                return st if st["delivery"] and st["delivery"]["paused"] else None

            st = wait_until(paused, 60, "the pause to show")
            d = st["delivery"]
            assert d["paused"] == "retry-after" and d["paused_until"] - st["time"] > 3000
            assert d["last_error"]["http_status"] == 503 and "maintenance" in d["last_error"]["detail"]
            assert d["last_success"] is None and d["next_probe"] is None
            text = out(ctl(inst, "status"))
            assert re.search(r"^Next retry:  .*\(in (59 min|1 h 0 min)", text, re.M), text
            assert re.search(r"^  paused:    until .*: the collector asked to wait$", text, re.M), text
            assert re.search(r"^  last error: .* ago\): HTTP 503: maintenance$", text, re.M), text

            col.answer(ACCEPT)
            assert ctl(inst, "restart").returncode == 0
            col.wait_for(1, 60)

            def sent():
                st = json.loads(out(ctl(inst, "status", "--json")))
                return st if st["delivery"]["last_success"] and st["queue"]["records"] == 0 else None

            st = wait_until(sent, 60, "the delivery to show")
            assert st["delivery"]["paused"] is None and st["delivery"]["last_error"]["http_status"] == 503
            assert st["counters"]["telempostd"]["delivered"] == 1
            text = out(ctl(inst, "status"))
            assert re.search(r"^  last sent: \d{4}-.* ago\)$", text, re.M) and "paused:" not in text, text
            assert "Next retry:  none (the queue is empty)" in text
        finally:
            ctl(inst, "stop")


@needs_daemons
def test_status_while_the_collector_is_down(user_install):
    """A failed delivery: the record is spooled, counted as retried, the retry time and the error shown."""
    port = free_port()
    inst = user_install
    inst.write_config(f"server=http://127.0.0.1:{port}/v2/collector\nspool_max_size=1024\n")
    inst.opt_in()
    try:
        assert ctl(inst, "start").returncode == 0
        Client(inst.paths).send(create_record("org.example/telemctl/down", 1, "x" * 300))

        def spooled():
            st = json.loads(out(ctl(inst, "status", "--json")))
            return st if st["queue"]["spooled"]["records"] == 1 else None

        st = wait_until(spooled, 60, "the failed attempt")
        q = st["queue"]
        assert q["records"] == 1 and q["staged"]["records"] == 0 and q["bytes"] == q["spooled"]["bytes"] > 300
        assert q["cap_bytes"] == 1024 * 1024
        assert q["next_retry"] > st["time"]
        assert st["counters"]["telempostd"]["retried"] >= 1
        assert st["counters"]["telempostd"]["delivered"] == 0
        text = out(ctl(inst, "status"))
        assert re.search(r"^Next retry:  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(in .+\)$", text, re.M), text
        assert re.search(r"^  spooled:   1 record, ", text, re.M), text
        assert journal_lines(inst) == []  # not decided yet: nothing journaled
        st = wait_until(lambda: (st := json.loads(out(ctl(inst, "status", "--json"))))["delivery"]
                        and st["delivery"]["last_error"] and st, 60, "the error to show")
        assert "curl error 7" in st["delivery"]["last_error"]["detail"] and st["delivery"]["last_success"] is None
        text = out(ctl(inst, "status"))
        assert re.search(r"^  last sent: never$", text, re.M), text
        assert re.search(r"^  last error: \d{4}-.* ago\): curl error 7: .*$", text, re.M), text
    finally:
        ctl(inst, "stop")


@needs_daemons
def test_daemon_that_cannot_start_is_one_line(user_install):
    """telemprobd cannot bind its socket: start reports its exit and its log's last line."""
    inst = user_install
    inst.opt_in()
    sock_dir = Path(inst.paths.socket_path).parent
    sock_dir.mkdir(parents=True, exist_ok=True)
    blocker = sock_dir / "telem-0"
    blocker.mkdir()
    (blocker / "keep").write_text("a directory where the socket should be")
    try:
        done = ctl(inst, "start")
        assert done.returncode == 1
        text = err(done)
        assert "Traceback" not in text
        assert re.search(r"^telemctl: telemprobd exited at start with status \d+.*\(log: .*telemprobd\.log\)$",
                         text, re.M), text
        assert ctl(inst, "is-active").stdout.decode() == "telemprobd : inactive\ntelempostd : active\n"
    finally:
        ctl(inst, "stop")


@needs_daemons
def test_unusable_log_and_lock_files_are_one_line_each(user_install):
    """A directory where a file must be: no traceback, no daemon started."""
    inst = user_install
    inst.opt_in()
    for name in ("telempostd", "telemprobd"):
        Path(inst.paths.state_dir, f"{name}.log").mkdir(parents=True)
    done = ctl(inst, "start")
    assert done.returncode == 1 and "Traceback" not in err(done)
    assert err(done).splitlines() == [
        f"telemctl: cannot start {name}: {inst.paths.state_dir}/{name}.log: Is a directory"
        for name in ("telempostd", "telemprobd")
    ]
    assert ctl(inst, "is-active").stdout.decode() == "telemprobd : inactive\ntelempostd : inactive\n"
    Path(inst.paths.run_dir, "telemctl.lock").unlink()
    Path(inst.paths.run_dir, "telemctl.lock").mkdir()
    assert_one_line_error(ctl(inst, "stop"), 1, "telemctl.lock: Is a directory")


# --- misuse: one line on stderr, non-zero exit, no traceback ---------------------------------------

@pytest.mark.parametrize("args,code,fragment", [
    (["bogus"], 2, "Unknown command passed to telemctl: 'bogus'"),
    (["journal", "-r", "xyz"], 2, "'xyz' is not a record id"),
    (["journal", "--record_id", "0" * 31], 2, "is not a record id"),
    (["journal", "-e", "12"], 2, "'12' is not an event id"),
    (["--system", "--user", "status"], 2, "--user and --system exclude each other"),
    (["journal", "-b", "not-a-boot-id"], 2, "is not a boot id"),
    (["journal", "-c", "a/b"], 2, "is not a classification"),
    (["journal", "-c", "a/b/c/*"], 2, "is not a classification prefix"),
    (["journal", "-n", "-1"], 2, "-n"),
    (["journal", "--outcome", "lost"], 2, "--outcome"),
    (["journal", "--bogus"], 2, "No such option"),
    (["journal", "-r"], 2, "requires an argument"),
    (["start", "extra"], 2, "unexpected extra argument"),
    (["is-active", "now"], 2, "unexpected extra argument"),
    (["-f", "relative.conf", "status"], 2, "must be absolute"),
    (["-f", "/nonexistent/telemetrics.conf", "status"], 2, "path not valid"),
    (["start"], 1, "Opt in to telemetry first."),
])
def test_misuse(user_install, args, code, fragment):
    done = ctl(user_install, *args)
    assert_one_line_error(done, code, fragment)
    assert done.stdout == b""


def test_no_command_prints_the_usage(user_install):
    done = ctl(user_install)
    assert done.returncode == 2
    assert "Usage: telemctl" in out(done) and "is-active" in out(done)


def test_bad_config_is_one_line(user_install):
    user_install.write_config("record_burst_limit=abc\n")
    assert_one_line_error(ctl(user_install, "status"), 1, "record_burst_limit")


def test_bad_mode_is_one_line(user_install):
    done = user_install.run(CTL, "status", env={"TELEMETRY_MODE": "bogus"})
    assert_one_line_error(done, 1, "TELEMETRY_MODE='bogus' is not a mode")


@pytest.mark.parametrize("module, args", [(CTL, ("--user", "status")), ("telemetry.probes.hprobe", ("--user",)),
                                          (MODULES["telemprobd"], ())])
def test_a_runtime_dir_others_can_write_is_refused(user_install, module, args):
    """/tmp: another user could bind the socket there first and take the records."""
    done = user_install.run(module, *args, env={"XDG_RUNTIME_DIR": "/tmp"})
    assert_one_line_error(done, 1, "XDG_RUNTIME_DIR=/tmp ")
    assert "user mode keeps its socket there" in err(done)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory another user owns needs root")
def test_a_runtime_dir_of_another_user_is_refused(user_install, tmp_path):
    other = tmp_path / "other-run"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    done = ctl(user_install, "status", env={"XDG_RUNTIME_DIR": str(other)})
    assert_one_line_error(done, 1, f"XDG_RUNTIME_DIR={other} belongs to uid 65534, not to you (uid 0)")


def test_unreadable_journal_is_one_line(user_install):
    os.makedirs(user_install.paths.journal_dir)
    Path(user_install.paths.journal_dir, journal_mod.JOURNAL_DB).write_bytes(b"this is not a database" * 100)
    assert_one_line_error(ctl(user_install, "journal"), 1, "journal.db")


def test_daemons_not_installed(user_install, tmp_path):
    """An installation without the daemon modules: start says which one is missing.

    The package is copied without them and run with -S (no site processing, so the
    editable install's finder cannot supply them) on the same third-party packages."""
    import click

    import telemetry
    import telemetry.daemons

    site = tmp_path / "site"
    shutil.copytree(os.path.dirname(telemetry.__file__), site / "telemetry",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.dirname(telemetry.daemons.__file__), site / "telemetry" / "daemons",
                    ignore=shutil.ignore_patterns("__pycache__", "probd", "postd"))
    third_party = os.path.dirname(os.path.dirname(click.__file__))
    user_install.opt_in()
    env = {**user_install.env, "PYTHONPATH": f"{site}{os.pathsep}{third_party}"}

    def run(*args):
        return subprocess.run([sys.executable, "-S", "-m", CTL, "--user", *args], capture_output=True,
                              env=env, cwd=tmp_path, timeout=60)

    try:
        assert_one_line_error(run("start"), 1, "telempostd is not installed (no module telemetry.daemons.postd.main)")
        assert run("is-active").returncode == 3
        assert not os.path.exists(os.path.join(user_install.paths.run_dir, "telempostd.pid"))
    finally:
        ctl(user_install, "stop")


def test_help_reads_like_a_man_page(user_install):
    for command in ("", "opt-in", "opt-out", "start", "stop", "restart", "is-active", "journal", "status"):
        done = ctl(user_install, *([command] if command else []), "--help")
        text = out(done)
        assert done.returncode == 0, command
        assert "Usage: telemctl" in text and "Exit status" in text, command
        assert "Options:" in text and "-h, --help" in text, command
    journal_help = out(ctl(user_install, "journal", "-h"))
    for flag in ("-r, --record_id", "-e, --event_id", "-c, --classification", "-b, --boot_id",
                 "-i, --include_record", "-V, --verbose", "--json"):
        assert flag in journal_help
    assert out(ctl(user_install, "-V")).strip() == __import__("telemetry").__version__


def test_shell_completion(user_install):
    done = user_install.run(CTL, env={"_TELEMCTL_COMPLETE": "bash_source"})
    assert done.returncode == 0 and "_telemctl_completion" in out(done)
    done = user_install.run(CTL, env={"_TELEMCTL_COMPLETE": "bash_complete", "COMP_WORDS": "telemctl jo",
                                      "COMP_CWORD": "1"})
    assert out(done).split() == ["plain,journal"]
    done = user_install.run(CTL, env={"_TELEMCTL_COMPLETE": "bash_complete",
                                      "COMP_WORDS": "telemctl journal --inc", "COMP_CWORD": "2"})
    assert out(done).split() == ["plain,--include_record"]


# --- system mode: only the checks that stop before the machine is touched ------------------------

def _as_nobody():
    os.setgid(65534)
    os.setgroups([])
    os.setuid(65534)


def _real_uid_nobody():
    # The original checks the real uid; the effective uid stays root so the interpreter
    # (possibly under a private /root) still runs.
    os.setresuid(65534, 0, 0)


def run_system(env, command, preexec=None):
    return subprocess.run([sys.executable, "-m", CTL, "--system", command], capture_output=True, env=env,
                          cwd="/", timeout=60, preexec_fn=preexec)


@pytest.mark.parametrize("command", ["opt-in", "opt-out", "start", "stop", "restart", "journal"])
def test_system_mode_needs_root(user_install, command):
    env = {k: v for k, v in user_install.env.items() if not k.startswith("XDG_")}
    env["TELEMETRY_MODE"] = "system"
    preexec = None
    if os.getuid() == 0:
        if command in ("opt-in", "opt-out"):
            # These change /etc and /var if the check failed: only with every uid dropped.
            preexec = _as_nobody
        elif os.path.isdir("/run/systemd/system"):
            pytest.skip("systemd runs here; with an effective uid of root a failed check would reach it")
        else:
            preexec = _real_uid_nobody
    try:
        done = run_system(env, command, preexec)
    except PermissionError:
        pytest.skip(f"{sys.executable} cannot be run by uid 65534 (it lives in a private directory)")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.decode() == "Must be root to run this command. Exiting...\n"
    assert done.stdout == b""


@pytest.mark.parametrize("command", ["start", "stop", "restart", "is-active"])
def test_system_mode_without_systemd(user_install, command):
    if os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd runs on this machine: the system units must not be touched by tests")
    kw = {}
    if command != "is-active" and os.getuid() != 0:
        pytest.skip("needs root to get past the root check (system mode)")
    done = subprocess.run([sys.executable, "-m", CTL, "--system", command], capture_output=True,
                          env=user_install.env, cwd="/", timeout=60, **kw)
    assert_one_line_error(done, 1, "systemd is not running on this machine")
