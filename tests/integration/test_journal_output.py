"""What `telemctl journal` and `telem_journal` print, from a real journal file written with
the store's own writer: every outcome is visible (a rejected record never looks
delivered), delivered lines keep the original layout, and nothing a local user or a
collector put in a record acts on the terminal it is printed to."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import time

import pytest

from telemetry.daemons.store.journal import Journal, JournalEntry, Outcome

CTL = "telemetry.daemons.ctl.main"
TELEM_JOURNAL = "telemetry.daemons.ctl.telem_journal"
BOOT = "60c014cd-4693-40f1-b334-548cd932949b"
ORIGINAL_LINE = re.compile(
    r"^(?P<cls>\S+)\s+ \w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ [0-9a-f]{32} [0-9a-f]{32} [0-9a-f-]{36}$"
)
# A screen clear, an OSC 52 clipboard write, a C1 CSI (raw byte and UTF-8), a right-to-left override.
HOSTILE = b"before\x1b[2J\x1b]52;c;ZXZpbA==\x07\x9b31m\xc2\x9b1m\xe2\x80\xaeafter\n"


def rid(n: int) -> str:
    return f"{n:032x}"


@pytest.fixture
def journal(user_install):
    now = time.time()
    entries = [
        JournalEntry(rid(1), now, "org.clearlinux/hello/world", "a" * 32, BOOT, Outcome.DELIVERED, 201),
        JournalEntry(rid(2), now, "org.example/bad/record", "b" * 32, BOOT, Outcome.REJECTED, 400,
                     "Telemetry ID mismatch\x1b[2J"),
        JournalEntry(rid(3), now, "org.example/old/record", "c" * 32, BOOT, Outcome.EXPIRED),
        JournalEntry(rid(4), now, "org.example/full/spool", "d" * 32, BOOT, Outcome.DROPPED, None,
                     "no spool space"),
        JournalEntry(rid(5), now, "org.example/user/payload", "e" * 32, BOOT, Outcome.DELIVERED, 201),
    ]
    j = Journal(user_install.paths.journal_dir)
    try:
        j.add(entries, retained=[(rid(5), HOSTILE)])
    finally:
        j.close()
    return user_install


def run(inst, module, *args, **kw) -> subprocess.CompletedProcess:
    return inst.run(module, *args, **kw)


def run_on_a_terminal(inst, module: str, *args: str) -> bytes:
    """The program's stdout is a pseudo-terminal, as when a user reads the journal."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=slave, stderr=subprocess.PIPE,
                                env=inst.env)
        os.close(slave)
        data = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other end closed
                break
            if not chunk:
                break
            data += chunk
        assert proc.wait(30) == 0, proc.stderr.read()
        proc.stderr.close()
        return data
    finally:
        os.close(master)


def test_every_outcome_is_shown_and_deliveries_keep_the_original_layout(journal):
    done = run(journal, CTL, "--user", "journal")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 5
    assert ORIGINAL_LINE.match(lines[0]) and ORIGINAL_LINE.match(lines[4])
    assert lines[1].endswith(" [rejected 400: Telemetry ID mismatch\\x1b[2J]")
    assert lines[2].endswith(" [expired]") and lines[3].endswith(" [dropped: no spool space]")
    for line in lines[1:4]:  # the original's five columns are still the first five
        assert ORIGINAL_LINE.match(line.rsplit(" [", 1)[0])
    assert b"\x1b" not in done.stdout


def test_telem_journal_is_the_same_view_with_the_original_options(journal):
    ctl = run(journal, CTL, "--user", "journal", "-V", "-c", "org.example/*").stdout
    done = run(journal, TELEM_JOURNAL, "-V", "-c", "org.example/*")
    assert done.returncode == 0 and done.stdout == ctl and done.stderr == b""
    assert done.stdout.decode().splitlines()[-1] == "Total records: 4"
    done = run(journal, TELEM_JOURNAL, "--record_id", rid(3))
    assert done.stdout.decode().count("\n") == 1 and "[expired]" in done.stdout.decode()
    done = run(journal, TELEM_JOURNAL, "-h")
    assert done.returncode == 0
    assert done.stdout.decode().startswith(
        "Usage:\n  telem_journal [-Vi] [-r <record_id>] [-e <event_id>] [-c <classification>] [-b <boot_id>]\n")
    done = run(journal, TELEM_JOURNAL, "-x")
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode() == "telem_journal: No such option '-x'. (see 'telem_journal --help')\n"
    done = run(journal, TELEM_JOURNAL, "-e", "12")
    assert done.returncode == 1 and done.stderr.decode().count("\n") == 1
    assert "'12' is not an event id" in done.stderr.decode()


def test_payloads_on_a_terminal_are_inert_and_exact_through_a_pipe(journal):
    screen = run_on_a_terminal(journal, CTL, "--user", "journal", "-i", "-r", rid(5))
    assert b"\x1b" not in screen and b"\x9b" not in screen and b"\x07" not in screen
    assert "\u202e".encode() not in screen and b"\xc2\x9b" not in screen
    text = screen.decode()
    assert "before\\x1b[2J\\x1b]52;c;ZXZpbA==\\x07\\x9b31m\\x9b1m\\u202eafter" in text
    assert run_on_a_terminal(journal, TELEM_JOURNAL, "-i", "-r", rid(5)) == screen
    piped = run(journal, CTL, "--user", "journal", "-i", "-r", rid(5)).stdout
    assert piped.endswith(b"\n" + HOSTILE)  # a script gets the bytes as they were sent


def test_json_escapes_c1_controls_too(journal):
    done = run(journal, CTL, "--user", "journal", "--json", "-i")
    assert done.returncode == 0, done.stderr
    raw = done.stdout
    for active in (b"\x1b", b"\x07", b"\xc2\x9b", b"\xc2\x85", "\u202e".encode()):
        assert active not in raw, active
    objs = json.loads(raw)
    assert objs[1]["detail"] == "Telemetry ID mismatch\x1b[2J" and objs[1]["outcome"] == "rejected"
    assert objs[4]["payload"] == HOSTILE.decode("utf-8", errors="replace")
