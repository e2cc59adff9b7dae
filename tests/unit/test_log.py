"""A user-mode daemon's log file: timestamped lines, rotated by size, and the process's
stdout and stderr following the current file (run in a child: it takes over fds 1 and 2);
a probe's logging, set up by its first line."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

CHILD = """
import sys
from telemetry import log
log.LOG_MAX_BYTES = 400
logger = log.setup("telempostd")
for n in range(40):
    logger.info("line %d", n)
print("printed after the last rotation", flush=True)
sys.stderr.write("a stray stderr line\\n")
"""


def test_rotated_timestamped_and_followed(tmp_path):
    path = tmp_path / "telempostd.log"
    done = subprocess.run([sys.executable, "-c", CHILD], env={**os.environ, "TELEMETRY_LOG_FILE": str(path)},
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"" and done.stderr == b""  # everything went to the file
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["telempostd.log", "telempostd.log.1", "telempostd.log.2", "telempostd.log.3"]
    for p in tmp_path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert p.stat().st_size <= 400 + 100
    current = path.read_text().splitlines()
    assert current[-2:] == ["printed after the last rotation", "a stray stderr line"]
    logged = [line for line in current if "line " in line]
    assert logged and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} telempostd: INFO: line \d+", line)
                          for line in logged)
    assert logged[-1].endswith("line 39")


LATER = """
import sys
from telemetry import log
log.setup_later("hprobe", "warning")
assert "logging" not in sys.modules, "imported before a line is logged"
log.logger("telemetry.metadata").info("below the level")
log.logger("telemetry.metadata").warning("the first line")
"""


def test_a_probe_s_logging_is_set_up_by_its_first_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID", "TELEMETRY_LOG_FILE")}
    done = subprocess.run([sys.executable, "-c", LATER], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "hprobe: WARNING: the first line\n")
