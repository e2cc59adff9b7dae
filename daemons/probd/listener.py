"""telemprobd's listening socket: the one systemd passes, or one it binds itself.

Binding follows the original (remove a stale socket, mode 0666, backlog SOMAXCONN) but
refuses what the original would clobber: a symlink, a file that is not a socket, or a
socket another telemprobd still answers on.
"""

from __future__ import annotations

import _socket
import errno
import logging
import os
import socket
import stat
import struct
from dataclasses import dataclass

from telemetry.config import Config
from telemetry.daemons.probd import reserved
from telemetry.daemons.store.queue import Sender
from telemetry.errors import TelemetryError
from telemetry.fsutil import UnsafePathError, ensure_dir
from telemetry.limits import SUN_PATH_MAX

log = logging.getLogger(__name__)

SOCKET_MODE_UMASK = 0o111  # bind() then creates the socket file with mode 0666
_UCRED = struct.Struct("3i")


class ListenerError(TelemetryError):
    """The socket cannot be set up; the message says which path and why."""


@dataclass
class Listener:
    """The listening socket, and what closing it must undo (the file we bound, if any)."""
    sock: socket.socket
    path: str
    activated: bool  # passed by systemd (socket activation)
    inode: tuple[int, int] | None = None  # of the socket file we created

    def close(self) -> None:
        """Close; remove the socket file only if we created it and it is still ours."""
        self.sock.close()
        if self.activated or self.inode is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self.inode:
                os.unlink(self.path)
        except OSError:
            pass


def from_systemd() -> socket.socket | None:
    """The listening socket systemd passed, None if none; an unusable one is an error."""
    if "LISTEN_FDS" not in os.environ:  # not socket-activated: libsystemd stays unloaded
        return None
    from systemd import daemon as sd

    try:
        fds = sd.listen_fds()
    except OSError as e:  # LISTEN_FDS names descriptors that are not there, or is no number
        raise ListenerError(
            f"the sockets passed by systemd are unusable (LISTEN_FDS={os.environ.get('LISTEN_FDS', '')!r}): "
            f"{e.strerror or e}; check telemprobd.socket"
        ) from None
    if not fds:
        return None
    fd = fds[0]
    if len(fds) > 1:
        log.warning("systemd passed %d sockets; using fd %d only", len(fds), fd)
    if not sd.is_socket_unix(fd, socket.SOCK_STREAM, 1):
        raise ListenerError(
            f"file descriptor {fd} passed by systemd is not a listening unix stream socket; "
            "check ListenStream= in telemprobd.socket"
        )
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def _remove_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise ListenerError(f"{path} is a symbolic link; refusing to follow it (remove it or fix socket_path)")
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenerError(f"{path} exists and is not a socket; refusing to remove it (fix socket_path)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (BlockingIOError, TimeoutError):
        pass  # a listener whose backlog is full: alive, only busy
    except OSError:
        try:
            os.unlink(path)  # nobody answers: a stale socket of an earlier run
        except OSError as e:
            raise ListenerError(f"cannot remove the stale socket {path}: {e.strerror}") from None
        return
    finally:
        probe.close()
    raise ListenerError(f"another telemprobd is already listening on {path}")


def check_socket_path(path: str) -> None:
    """What socket_path must be to be bound at all (also checked by telemctl before a restart)."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise ListenerError(f"socket path {path} is longer than {SUN_PATH_MAX} bytes; choose a shorter socket_path")
    if not os.path.isabs(path):
        raise ListenerError(f"socket_path {path!r} must be an absolute path")


def check_config(cfg: Config) -> None:
    """What telemprobd refuses to start with, of the config (telemctl checks it first)."""
    check_socket_path(cfg.socket_path)
    reserved.from_config(cfg)


def bind(path: str, *, create_dir: bool) -> Listener:
    check_socket_path(path)
    directory = os.path.dirname(path)
    if create_dir:
        try:
            ensure_dir(directory, 0o700)
        except (OSError, UnsafePathError) as e:
            raise ListenerError(f"cannot create the socket directory {directory}: {getattr(e, 'strerror', None) or e}") from None
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(SOCKET_MODE_UMASK)
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        hint = " (another telemprobd started at the same time?)" if e.errno == errno.EADDRINUSE else ""
        raise ListenerError(f"cannot bind {path}: {e.strerror}{hint}") from None
    finally:
        os.umask(old)
    sock.listen(socket.SOMAXCONN)
    sock.setblocking(False)
    st = os.lstat(path)
    return Listener(sock, path, activated=False, inode=(st.st_dev, st.st_ino))


def open_listener(path: str, *, create_dir: bool) -> Listener:
    passed = from_systemd()
    if passed is not None:
        name = passed.getsockname()
        log.info("listening on the socket passed by systemd (%s)", name or "unnamed")
        listener = Listener(passed, name if isinstance(name, str) else path, activated=True)
    else:
        listener = bind(path, create_dir=create_dir)
        log.info("listening on %s", path)
    pass_credentials(listener.sock)
    return listener


def peer_credentials(sock: _socket.socket) -> Sender:
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return Sender(uid=uid, gid=gid, pid=pid)


# Credentials a sender states with its first bytes (SCM_CREDENTIALS).  The kernel lets a
# process state only its own, unless it holds the privilege to state another's (root:
# crashprobe sends each crash report on behalf of the user whose process crashed), so
# they identify the sender for the rate limits' per-uid share.  SO_PASSCRED is set on the
# listening socket, and every accepted connection inherits it (one system call less per
# record): bytes sent without stated credentials carry the sender's own, those sent
# before the accept too.  Bytes carrying none (pid 0) leave SO_PEERCRED to stand.
CREDENTIALS_SPACE = socket.CMSG_SPACE(_UCRED.size)


def pass_credentials(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)


def stated_credentials(ancdata: list[tuple[int, int, bytes]]) -> Sender | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
            pid, uid, gid = _UCRED.unpack_from(data)
            if pid > 0:
                return Sender(uid=uid, gid=gid, pid=pid)
    return None
