"""A throwaway PostgreSQL server in a temporary directory, for tests, benchmarks and demos.

It uses the distribution's server binaries (Debian: /usr/lib/postgresql/<v>/bin), listens
only on a unix socket inside its own directory, trusts local connections, and runs as a
child of the calling process, so stopping it is signalling one known pid.  PostgreSQL
refuses to run as root: started by root, the server runs as the `postgres` account (or
`nobody`) and owns its directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

from telemetry.errors import TelemetryError

from .dependencies import hint

SUPERUSER = "collector"
PORT = 5432
START_TIMEOUT = 30.0
UNPRIVILEGED = ("postgres", "nobody")


class TempPostgresError(TelemetryError):
    pass


def find_bindir() -> str | None:
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    which = shutil.which("initdb")
    if which:
        candidates.append(os.path.dirname(which))
    for d in candidates:
        if d and os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(os.path.join(d, "postgres"), os.X_OK):
            return d
    return None


def _version_key(path: str) -> int:
    part = path.rstrip("/").split("/")[-2]
    return int(part) if part.isdigit() else 0


class TemporaryPostgres:
    """``with TemporaryPostgres() as pg: url = pg.create_database()``."""

    def __init__(self, *, durable: bool = True):
        self.durable = durable  # False: fsync off, for tests that do not measure
        self.bindir = find_bindir()
        self.dir: str | None = None
        self.process: subprocess.Popen | None = None
        self._user: pwd.struct_passwd | None = None

    def _run_as(self) -> dict:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if self._user is not None:
            env["HOME"] = self.dir or "/"
        env["LC_ALL"] = "C"
        return env

    def start(self) -> TemporaryPostgres:
        if self.bindir is None:
            raise TempPostgresError("PostgreSQL server binaries (initdb, postgres) not found; "
                                    "install Debian's postgresql or set PG_BINDIR")
        try:  # needed to see the server ready: known before a server is left running without it
            import psycopg  # noqa: F401
        except ImportError:
            raise TempPostgresError(f"psycopg is not installed: {hint('psycopg')}") from None
        if os.geteuid() == 0:
            for name in UNPRIVILEGED:
                with contextlib.suppress(KeyError):
                    self._user = pwd.getpwnam(name)
                    break
            if self._user is None:
                raise TempPostgresError("running as root and no unprivileged account "
                                        f"({', '.join(UNPRIVILEGED)}) to run PostgreSQL as")
        self.dir = tempfile.mkdtemp(prefix="tpg-", dir="/tmp")
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
        data = os.path.join(self.dir, "data")
        initdb = [os.path.join(self.bindir, "initdb"), "-D", data, "-U", SUPERUSER, "--auth=trust",
                  "-E", "UTF8", "--no-locale"]
        if not self.durable:
            initdb.append("--no-sync")
        try:
            done = subprocess.run(initdb, capture_output=True, env=self._env(), timeout=120, **self._run_as())
        except (OSError, subprocess.SubprocessError) as e:
            self.stop()
            raise TempPostgresError(f"initdb could not run: {e}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()[-1:]
            self.stop()
            raise TempPostgresError(f"initdb failed: {tail[0] if tail else done.returncode}")
        options = ["-k", self.dir, "-c", "listen_addresses=", "-p", str(PORT),
                   "-c", "max_connections=50", "-c", "shared_buffers=64MB"]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log = open(os.path.join(self.dir, "server.log"), "wb")  # noqa: SIM115
        try:
            self.process = subprocess.Popen([os.path.join(self.bindir, "postgres"), "-D", data, *options],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self._env(), **self._run_as())
        finally:
            log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = self._log_tail()
                self.stop()
                raise TempPostgresError(f"postgres exited with status {self.process.returncode}: {tail}")
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    tail = self._log_tail()
                    self.stop()
                    raise TempPostgresError(f"postgres did not accept connections: {tail}") from None
                time.sleep(0.1)

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self.dir or "", "server.log"), "rb") as f:
                lines = f.read()[-2000:].decode(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "empty log"

    def url(self, dbname: str) -> str:
        return f"postgresql:///{dbname}?host={self.dir}&port={PORT}&user={SUPERUSER}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = name or "t" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
