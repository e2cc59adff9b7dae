"""What every suite and the benchmarks share: an isolated user-mode installation, bounded
waiting, short directories for Unix sockets, a free TCP port, a sample of machine metadata,
a process's memory figures and a small PKI.

Test modules import it by name (pytest puts tests/ on the path for tests/conftest.py); the
benchmarks put tests/ on their path first.  Nothing here depends on pytest.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from unittest import mock

from telemetry.daemons.ctl.supervise import SYSTEMD_ENV
from telemetry.metadata import Metadata
from telemetry.paths import Paths

T = TypeVar("T")

# Fixed metadata the reference collector accepts; reading the machine's for every record
# would measure /proc, not the pipeline.
METADATA = Metadata(
    arch="x86_64",
    host_type="QEMU|Standard PC (i440FX + PIIX, 1996)|pc-i440fx-3.1",
    build="41000",
    kernel_version="6.6.1-1.native",
    system_name="clear-linux-os",
    board_name="blank|blank",
    cpu_model="Intel(R) Core(TM) i7-7600U CPU @ 2.80GHz",
    bios_version="1.16.1-1",
)
# Every collector of the tests and benchmarks listens here: a proxy set in the environment
# must not catch their requests.
LOOPBACK = "127.0.0.1,localhost"
# The install tooling is not installed with the package; it runs from the source tree.
PACKAGING_DIR = str(Path(__file__).resolve().parent.parent / "packaging")
INSTALL_TOOL_ENV = {"PYTHONPATH": PACKAGING_DIR}


# --- a user-mode installation ---------------------------------------------------------------

@dataclass
class UserInstall:
    root: Path
    env: dict[str, str]
    paths: Paths

    def write_config(self, text: str) -> Path:
        path = Path(self.paths.config_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not text.lstrip().startswith("["):
            text = "[settings]\n" + text
        path.write_text(text)
        return path

    def opt_in(self) -> None:
        Path(self.paths.opt_in_file).parent.mkdir(parents=True, exist_ok=True)
        Path(self.paths.opt_in_file).touch()

    def opt_out(self) -> None:
        Path(self.paths.opt_in_file).unlink(missing_ok=True)

    def run(self, module: str, *args: str, input: bytes | None = None, timeout: float = 60,
            check: bool = False, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `python -m module args` the way a user would run the program."""
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            input=input, capture_output=True, timeout=timeout, check=check,
            env={**self.env, **(env or {})},
        )

    def popen(self, module: str, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", module, *args], env=self.env, **kw)


# Paths.user() reads the XDG variables from os.environ: one installation at a time reads
# os.environ and swaps its own in (planted_symlinks makes installations from several threads).
_ENVIRON = threading.Lock()


def make_user_install(root: Path) -> UserInstall:
    """Config, state, cache, data and runtime directories below `root`, TELEMETRY_MODE=user,
    and none of the variables systemd sets for its units (a daemon seeing them believes it
    is one)."""
    dirs = {
        "XDG_CONFIG_HOME": root / "config",
        "XDG_STATE_HOME": root / "state",
        "XDG_CACHE_HOME": root / "cache",
        "XDG_DATA_HOME": root / "data",
        "XDG_RUNTIME_DIR": root / "run",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(dirs["XDG_RUNTIME_DIR"], 0o700)
    with _ENVIRON:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "TELEMETRY_")) and k not in SYSTEMD_ENV}
        env.update({k: str(v) for k, v in dirs.items()})
        env.update(TELEMETRY_MODE="user", no_proxy=LOOPBACK, NO_PROXY=LOOPBACK)
        with mock.patch.dict(os.environ, env, clear=True):
            paths = Paths.user()
    return UserInstall(root=root, env=env, paths=paths)


# --- waiting, directories, ports --------------------------------------------------------------

def checkpoint_wal(path: str, timeout: float = 30.0) -> None:
    """Copy a database's WAL into it and truncate the WAL, retried while another connection
    (telemprobd's checkpoint thread) is checkpointing: afterwards every row is in the file."""
    import sqlite3

    db = sqlite3.connect(path, isolation_level=None, timeout=timeout)
    try:
        wait_until(lambda: db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0, timeout,
                   f"a complete checkpoint of {path}", interval=0.02)
    finally:
        db.close()


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, what: str = "the condition",
               interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something true, and return that; an AssertionError
    naming `what` after `timeout` seconds (a bound for a loaded machine, never a measurement)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(interval)


def short_tempdir(prefix: str = "t-") -> str:
    """A new directory under /tmp: Unix socket paths are limited to 107 bytes, and pytest's
    tmp_path can be longer."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of the call)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- messages --------------------------------------------------------------------------------

def no_such_option(option: str) -> str:
    """click's message for an unknown option, in the installed click's words (8.1, Debian 12's,
    says "No such option: -x", later ones "No such option '-x'.")."""
    import click

    return click.exceptions.NoSuchOption(option).format_message()


# --- processes ---------------------------------------------------------------------------------

def proc_memory(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status in bytes (VmRSS: now, VmHWM: the peak); 0 once the
    process is gone."""
    return _proc_kib_field(f"/proc/{pid}/status", field)


def proc_pss(pid: int) -> int:
    """The process's proportional set size in bytes (/proc/PID/smaps_rollup); 0 once gone."""
    return _proc_kib_field(f"/proc/{pid}/smaps_rollup", "Pss")


def _proc_kib_field(path: str, field: str) -> int:
    prefix = field.encode() + b":"
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(prefix):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


# --- certificates ------------------------------------------------------------------------------

def make_pki(directory: Path) -> Path:
    """With the openssl command: a CA, a server certificate for 127.0.0.1 and a client
    certificate signed by it (ca.pem, server.pem/.key, client.pem/.key in `directory`)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, usage, san in (("server", "serverAuth", "IP:127.0.0.1"), ("client", "clientAuth", "DNS:client")):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (directory / f"{name}.ext").write_text(
            f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\nsubjectAltName={san}\n"
        )
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return directory


def make_client_cert(directory: Path, name: str, common_name: str) -> tuple[Path, Path]:
    """Another client certificate from make_pki's CA, with the subject CN `common_name`:
    (`name`.pem, `name`.key) in `directory`."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/O=Test Fleet/CN={common_name}")
    (directory / f"{name}.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                                           "extendedKeyUsage=clientAuth\nsubjectAltName=DNS:host.example\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return directory / f"{name}.pem", directory / f"{name}.key"
