"""Where every file lives, in system mode and in user mode.

System mode is the original's layout (/etc/telemetrics, /var/spool/telemetry, /run/telem-0,
…) used by the packaged daemons.  User mode puts the same files in the XDG directories of
whoever runs the programs, so the whole pipeline runs without root and without systemd:
that is what the demo, the tests and the benchmarks use.  Nothing else in the code
differs between the modes.
"""

from __future__ import annotations

import enum
import os
import pwd
import stat
from dataclasses import dataclass

from .errors import TelemetryError

APP = "telemetrics"
MODE_ENV = "TELEMETRY_MODE"
SERVICE_USER = "telemetry"

# Install-time locations; `make install PREFIX=…` writes telemetry/_prefix.py.
try:
    from . import _prefix  # type: ignore[attr-defined]
except ImportError:
    _prefix = None
PREFIX: str = getattr(_prefix, "PREFIX", "/usr")
SYSCONFDIR: str = getattr(_prefix, "SYSCONFDIR", "/etc")
LOCALSTATEDIR: str = getattr(_prefix, "LOCALSTATEDIR", "/var")
RUNDIR: str = getattr(_prefix, "RUNDIR", "/run")


class Mode(enum.Enum):
    SYSTEM = "system"
    USER = "user"


class PathsError(TelemetryError):
    pass


@dataclass(frozen=True)
class Paths:
    """Every file and directory of one mode (system or user)."""
    mode: Mode
    config_dir: str
    config_file: str  # the admin's telemetrics.conf
    defaults_file: str  # the distribution's telemetrics.conf (system mode only)
    opt_in_file: str
    static_machine_id_file: str
    no_privacy_filters_file: str
    socket_path: str  # default of the socket_path key
    spool_dir: str  # default of the spool_dir key: the queue database lives here
    state_dir: str  # machine id, probe cursors, flood-control state
    machine_id_file: str
    journal_dir: str  # journal and retention database
    cache_dir: str
    pstore_cache_dir: str
    run_dir: str  # pid files of user-mode daemons
    tmpfiles_conf: str

    @classmethod
    def system(
        cls,
        prefix: str = PREFIX,
        sysconfdir: str = SYSCONFDIR,
        localstatedir: str = LOCALSTATEDIR,
        rundir: str = RUNDIR,
    ) -> Paths:
        conf = os.path.join(sysconfdir, "telemetrics")
        return cls(
            mode=Mode.SYSTEM,
            config_dir=conf,
            config_file=os.path.join(conf, "telemetrics.conf"),
            defaults_file=os.path.join(prefix, "share/defaults/telemetrics/telemetrics.conf"),
            opt_in_file=os.path.join(conf, "opt-in"),
            static_machine_id_file=os.path.join(conf, "opt-in-static-machine-id"),
            no_privacy_filters_file=os.path.join(conf, "opt-in-no-privacy-filters"),
            socket_path=os.path.join(rundir, "telem-0"),
            spool_dir=os.path.join(localstatedir, "spool/telemetry"),
            state_dir=os.path.join(localstatedir, "lib/telemetry"),
            machine_id_file=os.path.join(localstatedir, "lib/telemetry/machine_id"),
            journal_dir=os.path.join(localstatedir, "log/telemetry"),
            cache_dir=os.path.join(localstatedir, "cache/telemetry"),
            pstore_cache_dir=os.path.join(localstatedir, "cache/telemetry/pstore"),
            run_dir=os.path.join(rundir, "telemetry"),
            tmpfiles_conf=os.path.join(prefix, "lib/tmpfiles.d/telemetrics-dirs.conf"),
        )

    @classmethod
    def user(cls) -> Paths:
        config = user_config_dir()
        state = user_state_dir()
        cache = user_cache_dir()
        runtime = _user_runtime_dir()
        return cls(
            mode=Mode.USER,
            config_dir=config,
            config_file=os.path.join(config, "telemetrics.conf"),
            defaults_file="",
            opt_in_file=os.path.join(config, "opt-in"),
            static_machine_id_file=os.path.join(config, "opt-in-static-machine-id"),
            no_privacy_filters_file=os.path.join(config, "opt-in-no-privacy-filters"),
            socket_path=os.path.join(runtime, "telem-0"),
            spool_dir=os.path.join(state, "spool"),
            state_dir=state,
            machine_id_file=os.path.join(state, "machine_id"),
            journal_dir=os.path.join(state, "journal"),
            cache_dir=cache,
            pstore_cache_dir=os.path.join(cache, "pstore"),
            run_dir=runtime,
            tmpfiles_conf="",
        )

    @classmethod
    def detect(cls, mode: Mode | str | None = None) -> Paths:
        """Explicit mode, else $TELEMETRY_MODE, else by who we are and what is installed."""
        chosen = _resolve_mode(mode)
        return cls.system() if chosen is Mode.SYSTEM else cls.user()

    def user_dirs(self) -> tuple[str, ...]:
        """Directories a user-mode program may create for itself (system mode: tmpfiles)."""
        return (self.config_dir, self.spool_dir, self.state_dir, self.journal_dir, self.run_dir)


# The XDG Base Directory rule, as platformdirs applies it on Linux (tests/unit/test_ack_paths_state.py
# compares them): the variable when it holds an absolute path (the specification says to
# ignore a relative one), else its default under the home directory.  Written out here
# because it is four lines and importing platformdirs cost every user-mode program
# (daemons included) over a megabyte: it brings tempfile, shutil, random and the
# compression modules with it.
def _xdg_home(variable: str, default: str) -> str:
    value = os.environ.get(variable, "")
    return value if os.path.isabs(value) else os.path.expanduser(default)


def user_config_dir() -> str:
    """The user's configuration directory for telemetrics (platformdirs.user_config_dir)."""
    return os.path.join(_xdg_home("XDG_CONFIG_HOME", "~/.config"), APP)


def user_state_dir() -> str:
    """The user's state directory for telemetrics (platformdirs.user_state_dir)."""
    return os.path.join(_xdg_home("XDG_STATE_HOME", "~/.local/state"), APP)


def user_cache_dir() -> str:
    """The user's cache directory for telemetrics (platformdirs.user_cache_dir)."""
    return os.path.join(_xdg_home("XDG_CACHE_HOME", "~/.cache"), APP)


def _user_runtime_dir() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base):
        _check_runtime_dir(base)
        return os.path.join(base, APP)
    # Without a session runtime dir, keep the socket under the state dir: /tmp would be
    # shared with every other user.
    return os.path.join(user_state_dir(), "run")


def _check_runtime_dir(base: str) -> None:
    """The socket and the pid files go there: a directory another user owns or can write
    to would let them take the records (bind the socket first) or stop our daemons."""
    try:
        st = os.stat(base)
    except FileNotFoundError:
        return  # created, private, when first needed
    except OSError as e:
        raise PathsError(f"XDG_RUNTIME_DIR={base} cannot be used: {e.strerror}") from None
    uid = os.getuid()
    if st.st_uid != uid:
        raise PathsError(f"XDG_RUNTIME_DIR={base} belongs to uid {st.st_uid}, not to you (uid {uid}); "
                         "user mode keeps its socket there, so it must be your own private directory")
    if st.st_mode & 0o022:
        raise PathsError(f"XDG_RUNTIME_DIR={base} can be written by other users (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}); user mode keeps its socket there: chmod 700 it")


def _resolve_mode(mode: Mode | str | None) -> Mode:
    value = mode.value if isinstance(mode, Mode) else mode
    value = value or os.environ.get(MODE_ENV) or ""
    if value:
        try:
            return Mode(value.lower())
        except ValueError:
            raise PathsError(f"{MODE_ENV}={value!r} is not a mode; use 'system' or 'user'") from None
    uid = os.getuid()
    if uid == 0:
        return Mode.SYSTEM
    try:
        if pwd.getpwuid(uid).pw_name == SERVICE_USER:
            return Mode.SYSTEM
    except KeyError:
        pass
    # An ordinary user on a machine running the system daemons sends to them.
    try:
        if stat.S_ISSOCK(os.stat(Paths.system().socket_path).st_mode):
            return Mode.SYSTEM
    except OSError:
        pass
    return Mode.USER
