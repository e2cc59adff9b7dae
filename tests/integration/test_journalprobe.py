"""journalprobe against journal files the test writes (systemd-journal-remote turns the
journal export format into real journal files, `_`-fields included) and a real telemprobd.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support import wait_until
from telemprobd_harness import Probd, row_headers, rows

JOURNAL_REMOTE = next(
    (p for p in ("/usr/lib/systemd/systemd-journal-remote", "/lib/systemd/systemd-journal-remote")
     if os.access(p, os.X_OK)),
    shutil.which("systemd-journal-remote"),
)
BOOT_FILE = "/proc/sys/kernel/random/boot_id"
OTHER_BOOT = "0123456789abcdef0123456789abcdef"

pytestmark = pytest.mark.skipif(
    JOURNAL_REMOTE is None or not os.path.exists(BOOT_FILE),
    reason="no journal can be written here: systemd-journal-remote (Debian package systemd-journal-remote) "
    "or the boot id is missing",
)


def boot_id() -> str:
    return Path(BOOT_FILE).read_text().strip().replace("-", "")


def manager_exit(message: str, **extra: str) -> dict[str, str]:
    """What PID 1 logs when a unit's main process fails."""
    return {"_PID": "1", "_UID": "0", "_GID": "0", "_COMM": "systemd", "_EXE": "/usr/lib/systemd/systemd",
            "_TRANSPORT": "journal", "SYSLOG_IDENTIFIER": "systemd", "PRIORITY": "4", "EXIT_CODE": "exited",
            "EXIT_STATUS": "1", "UNIT": message.split(":")[0], "MESSAGE": message, **extra}


class Journal:
    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(exist_ok=True)
        self.files = 0
        self.mono = 1_000_000

    def write(self, *entries: dict[str, str], at: float | None = None) -> None:
        now = int((time.time() if at is None else at) * 1_000_000)
        out = []
        for n, fields in enumerate(entries):
            self.mono += 1000
            head = {"__REALTIME_TIMESTAMP": str(now + n), "__MONOTONIC_TIMESTAMP": str(self.mono),
                    "_BOOT_ID": boot_id(), "_HOSTNAME": "test"}
            out.append("".join(f"{k}={v}\n" for k, v in {**head, **fields}.items()))
        self.files += 1
        target = self.dir / f"remote-{self.files}.journal"
        subprocess.run([JOURNAL_REMOTE, f"--output={target}", "-"], input="\n".join(out).encode() + b"\n",
                       check=True, capture_output=True, timeout=30)


def opt_in_earlier(inst, seconds: float = 60) -> None:
    inst.opt_in()
    t = time.time() - seconds
    os.utime(inst.paths.opt_in_file, (t, t))


def probe(inst, journal: Journal, *args: str):
    return inst.run("telemetry.probes.journalprobe", "-D", str(journal.dir), "--once", *args)


def test_selects_only_trusted_unit_exits_and_never_resends(user_install, tmp_path):
    journal = Journal(tmp_path / "journal")
    with Probd(user_install, opt_in=False) as probd:
        opt_in_earlier(user_install)
        journal.write(manager_exit("old.service: Main process exited, code=exited, status=1/FAILURE"),
                      at=time.time() - 3600)  # before opting in
        journal.write(
            manager_exit("a.service: Main process exited, code=exited, status=1/FAILURE"),
            # forged: a user's program setting the fields a unit exit carries
            manager_exit("forged.service: Main process exited", _PID="4242", _UID="1000", _COMM="systemd",
                         _EXE="/home/u/systemd"),
            manager_exit("otherboot.service: Main process exited", _BOOT_ID=OTHER_BOOT),
            manager_exit("prio.service: error", EXIT_CODE="killed", PRIORITY="2"),
            manager_exit("u.service: Main process exited, code=exited, status=2/INVALIDARGUMENT", _PID="999",
                         _UID="1000", _EXE="/usr/lib/systemd/systemd"),  # a user's systemd binary: not trusted
            {"_PID": "77", "_UID": "0", "_TRANSPORT": "stdout", "MESSAGE": "EXIT_CODE=exited"},
        )
        r = probe(user_install, journal)
        assert r.returncode == 0, r.stderr
        staged = rows(probd)
        assert [row.payload for row in staged] == [
            b"MESSAGE=a.service: Main process exited, code=exited, status=1/FAILURE\n",
        ]
        for row in staged:
            h = row_headers(row)
            assert (h["classification"], h["severity"], h["payload_format_version"]) == (
                "org.clearlinux/journal/error", "2", "1")
            assert h["kernel_version"] == os.uname().release and row.sender.uid == os.getuid()
        assert probe(user_install, journal).returncode == 0
        assert len(rows(probd)) == 1  # the cursor was saved: nothing twice
        journal.write(manager_exit("b.service: Main process exited, code=exited, status=3/NOTIMPLEMENTED"))
        assert probe(user_install, journal).returncode == 0
        assert [row.payload for row in rows(probd)][1:] == [
            b"MESSAGE=b.service: Main process exited, code=exited, status=3/NOTIMPLEMENTED\n"]


def test_privacy_override_adds_error_priorities_from_root_only(user_install, tmp_path):
    journal = Journal(tmp_path / "journal")
    with Probd(user_install, opt_in=False) as probd:
        opt_in_earlier(user_install)
        Path(user_install.paths.no_privacy_filters_file).touch()
        journal.write(
            {"_PID": "300", "_UID": "0", "_TRANSPORT": "syslog", "PRIORITY": "2", "MESSAGE": "root crit"},
            {"_PID": "301", "_UID": "1000", "_TRANSPORT": "syslog", "PRIORITY": "0", "MESSAGE": "user emerg"},
            {"_TRANSPORT": "kernel", "PRIORITY": "3", "MESSAGE": "kernel err"},
            {"_PID": "302", "_UID": "0", "_TRANSPORT": "syslog", "PRIORITY": "4", "MESSAGE": "root warning"},
        )
        assert probe(user_install, journal).returncode == 0
        assert [row.payload for row in rows(probd)] == [b"MESSAGE=root crit\n", b"MESSAGE=kernel err\n"]


def test_tail_skips_what_is_there_on_the_first_start_only(user_install, tmp_path):
    journal = Journal(tmp_path / "journal")
    with Probd(user_install, opt_in=False) as probd:
        opt_in_earlier(user_install)
        journal.write(manager_exit("before.service: Main process exited"))
        assert probe(user_install, journal, "-t").returncode == 0
        assert rows(probd) == []
        journal.write(manager_exit("after.service: Main process exited"))
        assert probe(user_install, journal, "--tail").returncode == 0
        assert [row.payload for row in rows(probd)] == [b"MESSAGE=after.service: Main process exited\n"]


def test_failed_send_is_retried_on_the_next_run(user_install, tmp_path):
    journal = Journal(tmp_path / "journal")
    opt_in_earlier(user_install)
    journal.write(manager_exit("a.service: Main process exited"), manager_exit("b.service: Main process exited"))
    user_install.write_config(f"socket_path={tmp_path}/absent.sock\n")
    r = probe(user_install, journal)
    assert r.returncode == 1
    assert "Failed to send record" in r.stderr.decode() and r.stderr.decode().count("\n") == 1
    with Probd(user_install, opt_in=False) as probd:
        assert probe(user_install, journal).returncode == 0
        assert [row.payload for row in rows(probd)] == [b"MESSAGE=a.service: Main process exited\n",
                                                          b"MESSAGE=b.service: Main process exited\n"]


def test_follows_new_entries(user_install, tmp_path):
    journal = Journal(tmp_path / "journal")
    with Probd(user_install, opt_in=False) as probd:
        opt_in_earlier(user_install)
        journal.write(manager_exit("a.service: Main process exited"))
        proc = user_install.popen("telemetry.probes.journalprobe", "-D", str(journal.dir),
                                  stderr=subprocess.PIPE)
        try:
            wait_until(lambda: rows(probd), what="the first entry staged")
            journal.write(manager_exit("b.service: Main process exited"))
            wait_until(lambda: len(rows(probd)) >= 2, what="the second entry staged")
        finally:
            proc.terminate()
            assert proc.wait(30) == 0
            proc.stderr.close()
        assert len(rows(probd)) == 2
        assert probe(user_install, journal).returncode == 0  # the cursor was saved on SIGTERM
        assert len(rows(probd)) == 2


def test_stopped_while_retrying_sends_the_entry_next_run(user_install, tmp_path):
    """SIGTERM while waiting to retry a send ends the wait at once; the entry is not
    counted as handled, so the next run sends it."""
    journal = Journal(tmp_path / "journal")
    opt_in_earlier(user_install)
    journal.write(manager_exit("a.service: Main process exited"))
    user_install.write_config(f"socket_path={tmp_path}/absent.sock\n")  # telemprobd away
    proc = user_install.popen("telemetry.probes.journalprobe", "-D", str(journal.dir), stderr=subprocess.PIPE)
    seen = b""
    deadline = time.monotonic() + 30
    while b"retrying in" not in seen and time.monotonic() < deadline:
        if select.select([proc.stderr], [], [], 1)[0]:
            seen += os.read(proc.stderr.fileno(), 4096)
    assert b"retrying in" in seen, seen
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    proc.stderr.close()
    user_install.write_config("")
    with Probd(user_install, opt_in=False) as probd:
        assert probe(user_install, journal).returncode == 0
        assert [row.payload for row in rows(probd)] == [b"MESSAGE=a.service: Main process exited\n"]


def test_bad_directory_and_corrupt_cursor(user_install, tmp_path):
    opt_in_earlier(user_install)
    cursor = Path(user_install.paths.state_dir) / "journalprobe.cursor"
    cursor.parent.mkdir(parents=True, exist_ok=True)
    cursor.write_bytes(b"\xff\xfe not a cursor")
    journal = Journal(tmp_path / "journal")
    journal.write(manager_exit("a.service: Main process exited"))
    with Probd(user_install, opt_in=False) as probd:
        r = probe(user_install, journal)
        assert r.returncode == 0 and "starting afresh" in r.stderr.decode()
        assert len(rows(probd)) == 1
    r = user_install.run("telemetry.probes.journalprobe", "--bogus")
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1


# --- a user posing as systemd, through a real journald -------------------------------------

JOURNALD = next((p for p in ("/usr/lib/systemd/systemd-journald", "/lib/systemd/systemd-journald")
                 if os.access(p, os.X_OK)), None)
SYSTEMD = next((p for p in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd") if os.access(p, os.X_OK)), None)
# Loaded into the real systemd binary: it logs a unit failure as PID 1 would word it,
# with every field a client can set, then exits before systemd's main() runs.  It waits
# a moment so that journald still finds the process and records its _EXE.
FORGER = r"""
#include <systemd/sd-journal.h>
#include <unistd.h>
__attribute__((constructor)) static void forge(void) {
    sd_journal_send("MESSAGE=sshd.service: Main process exited, code=exited, status=1/FAILURE",
                    "EXIT_CODE=exited", "EXIT_STATUS=1", "UNIT=sshd.service", "SYSLOG_IDENTIFIER=systemd",
                    "PRIORITY=4", "_PID=1", "_UID=0", "_EXE=/usr/lib/systemd/systemd", NULL);
    usleep(300000);
    _exit(0);
}
"""
# In a mount namespace of its own, over a private /run: a journald that only this test
# talks to, keeping its journal in memory, which is then copied out.
JOURNALD_RUN = """
set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journald.conf.d
printf '[Journal]\\nStorage=volatile\\nReadKMsg=no\\nForwardToSyslog=no\\nForwardToWall=no\\nForwardToConsole=no\\n' \\
    > /run/systemd/journald.conf.d/test.conf
{journald} >/dev/null 2>&1 &
pid=$!
i=0; while [ ! -S /run/systemd/journal/socket ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done
setpriv --reuid=65534 --regid=65534 --clear-groups env LD_PRELOAD={so} {systemd}
kill $pid; wait $pid || true
cp -r /run/log/journal {out}
"""


def _forgery_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "a private journald needs root (a mount namespace over /run)"
    for tool in ("unshare", "setpriv", "gcc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if JOURNALD is None or SYSTEMD is None:
        return "systemd-journald or the systemd binary is not installed"
    if not os.path.exists("/usr/include/systemd/sd-journal.h"):
        return "libsystemd-dev (sd-journal.h) is not installed"
    return None


@pytest.mark.skipif(_forgery_unavailable() is not None, reason=str(_forgery_unavailable()))
def test_a_user_running_systemd_with_ld_preload_is_not_the_service_manager(user_install, short_dir):
    """The forger runs the real systemd binary as an unprivileged user, so journald
    records _EXE=/usr/lib/systemd/systemd and _COMM=systemd; its own _PID/_UID/_EXE
    fields are replaced by journald's.  Nothing of it is reported."""
    from systemd import journal as sd_journal

    work = short_dir
    os.chmod(work, 0o755)
    (work / "forge.c").write_text(FORGER)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(work / "forge.so"), str(work / "forge.c"), "-lsystemd"],
                   check=True, capture_output=True, timeout=60)
    os.chmod(work / "forge.so", 0o755)
    script = JOURNALD_RUN.format(journald=JOURNALD, so=work / "forge.so", systemd=SYSTEMD, out=work / "journal")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                          timeout=60)
    if done.returncode != 0:
        pytest.skip(f"a private journald could not run here: {done.stderr.decode(errors='replace').strip()[-300:]}")
    (machine_dir,) = (work / "journal").iterdir()
    reader = sd_journal.Reader(path=str(machine_dir))
    forged = [e for e in reader if e.get("EXIT_CODE") == "exited"]
    reader.close()
    assert len(forged) == 1, forged
    fields = forged[0]
    assert fields["_UID"] == 65534 and fields["_PID"] != 1 and fields["_TRANSPORT"] == "journal"
    assert fields.get("_EXE") in (SYSTEMD, os.path.realpath(SYSTEMD)) and fields.get("_COMM") == "systemd"

    with Probd(user_install, opt_in=False) as probd:
        opt_in_earlier(user_install)
        r = user_install.run("telemetry.probes.journalprobe", "-D", str(machine_dir), "--once")
        assert r.returncode == 0, r.stderr
        assert rows(probd) == []
