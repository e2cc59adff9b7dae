"""Malformed configuration: every daemon refuses it with one line and exit status 1, at
start (-f, or the default file being something other than a readable regular file) and on
SIGHUP (the running settings are kept).  What the original ignores silently (an unknown
key or section, a repeated key) starts, with one warning naming the file and the line."""

from __future__ import annotations

import os
import signal

import pytest
from pipeline import Ledger, Pipeline, ReferenceCollector, Senders
from scenarios import (
    MALFORMED_CONFIGS,
    WARNED_CONFIGS,
    isolated_env,
    malformed_configs,
    run_program,
)
from services import POSTD, PROBD
from support import wait_until

DAEMONS = ("telemprobd", "telempostd")


def test_every_malformed_file_is_refused_with_one_line(user_install, tmp_path):
    out = malformed_configs(user_install, tmp_path, seed=17, mutants=20)
    print(f"\n{out.result.note}")
    wrong = {}
    for (name, program), run in out.runs.items():
        if run.state == "hung" or any("Traceback" in e for e in run.errors):
            wrong[(name, program)] = run
        elif program in out.must_refuse[name] and not (run.state == "refused" and run.returncode == 1
                                                         and run.one_line):
            wrong[(name, program)] = run
        elif run.state == "refused" and not run.one_line:
            wrong[(name, program)] = run
        elif name in WARNED_CONFIGS:
            expected = out.paths[name] + WARNED_CONFIGS[name][1]
            if run.state != "started" or run.errors or not any(expected in w for w in run.warnings):
                wrong[(name, program)] = run
    assert not wrong, wrong


def special(kind: str, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "symlink loop":
        os.symlink(os.path.basename(path), path)
    elif kind == "dangling symlink":
        os.symlink("/nonexistent/telemetrics.conf", path)
    elif kind == "over 1 MiB":
        with open(path, "wb") as f:
            f.write(MALFORMED_CONFIGS["over 1 MiB"])


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink loop", "dangling symlink", "over 1 MiB"])
@pytest.mark.parametrize("program", DAEMONS)
def test_the_default_config_file_that_cannot_be_read_is_one_line(user_install, kind, program):
    """Not given with -f: the file each program looks for is a FIFO (which would block a
    reader forever), a directory, a link to nowhere, or too big."""
    special(kind, user_install.paths.config_file)
    with isolated_env(user_install, program) as env:
        run = run_program(program, env, timeout=15)
    assert run.state == "refused", run
    assert run.returncode == 1 and run.one_line, run
    assert user_install.paths.config_file in run.errors[0]


def test_sighup_with_a_malformed_file_keeps_the_running_settings(user_install, tmp_path):
    with ReferenceCollector(tmp_path) as collector:
        pipe = Pipeline(user_install, collector.url, "rate_limit_enabled=false")
        good = open(user_install.paths.config_file, "rb").read()
        with pipe:
            client = pipe.client()  # read the good file; the programs are what is tested here
            cases = [(name, text) for name, text in sorted(MALFORMED_CONFIGS.items()) if name != "over 1 MiB"]
            for n, (name, text) in enumerate(cases):
                with open(user_install.paths.config_file, "wb") as f:
                    f.write(text)
                for daemon in (PROBD, POSTD):
                    pipe.manager.signal(daemon, signal.SIGHUP)
                for daemon in (PROBD, POSTD):
                    wait_until(lambda d=daemon, k=n + 1: pipe.manager.log(d).count("keeping") >= k, 20,
                               f"{daemon} to refuse {name!r}")
            ledger = Ledger()
            Senders(client, ledger, threads=1, total=10).start().join()
            assert len(ledger.acked) == 10, ledger
            pipe.wait_drained(30)
            with open(user_install.paths.config_file, "wb") as f:
                f.write(good)
            assert not pipe.manager.crashes() and not pipe.manager.tracebacks()
        assert set(ledger.acked) <= set(collector.rows())
    assert pipe.manager.usage(PROBD).starts == 1 and pipe.manager.usage(POSTD).starts == 1
