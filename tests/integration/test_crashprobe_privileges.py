"""What crashprobe does to its own process before it touches a core: never dumpable (so a
crash of crashprobe cannot come back to it), and, as root, the crashed user's identity."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = """
import ctypes, os, resource
from telemetry.probes.crash.privileges import make_undumpable, drop_to
make_undumpable()
libc = ctypes.CDLL(None)
print(libc.prctl(3, 0, 0, 0, 0), resource.getrlimit(resource.RLIMIT_CORE))
if len(os.sys.argv) > 1:
    drop_to(int(os.sys.argv[1]), int(os.sys.argv[2]))
    print(os.getresuid(), os.getresgid(), os.getgroups(), libc.prctl(3, 0, 0, 0, 0))
"""


def test_never_dumpable_and_marked_as_a_core_helper():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout
    dumpable, limit = out.split(" ", 1)
    assert dumpable == "0"
    assert limit.strip() in ("(1, 1)", "(0, 0)")  # 1: the kernel's own mark; 0 if the hard limit was 0


def test_root_drops_to_the_crashed_user_for_good():
    if os.geteuid() != 0:
        pytest.skip("dropping privileges is only done as root")
    out = subprocess.run([sys.executable, "-c", CHECK, "65534", "65534"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[1] == "(65534, 65534, 65534) (65534, 65534, 65534) [] 0"


# Preloaded, then every further import refused: as after a drop to an identity that cannot
# read the interpreter's files.  The report must still be the full backtrace.
AFTER_PRELOAD = """
import os, sys
from telemetry.probes.crash.pipeline import Action, CrashEvent, Outcome
from telemetry.probes.crash.reporter import Reporter, preload
cp = Reporter(None, (), kernel=False)
preload()

class NoImports:
    def find_spec(self, name, path=None, target=None):
        raise ImportError(f"{name} imported after preload")

sys.meta_path.insert(0, NoImports())
fd = os.open(sys.argv[1], os.O_RDONLY)
event = CrashEvent(process_name="crasher")
report = cp.report(event, Outcome(Action.ANALYZE), lambda: cp.read_core(fd), cp.access_for(event, None))
print(report.payload)
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="crashprobe unwinds x86-64 cores")
def test_preload_imports_everything_the_analysis_needs(user_install, tmp_path_factory):
    from crash_programs import shared_lab

    core = shared_lab(tmp_path_factory).core("O0", "segv")
    r = subprocess.run([sys.executable, "-c", AFTER_PRELOAD, str(core)], capture_output=True, text=True,
                       env=user_install.env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "imported after preload" not in r.stderr + r.stdout
    assert "Error:" not in r.stdout, r.stdout
    assert "#0 leaf() - [" in r.stdout and "main() - [" in r.stdout, r.stdout
