"""Sending a record to telemprobd: one frame per connection, then the acknowledgement.

Unlike libtelemetry, `send` learns whether the record was kept: our telemprobd answers
after the durable commit (see `telemetry.ack` for the bytes).  An original telemprobd
never answers; its EOF counts as accepted.  Every wait is bounded, SIGPIPE cannot kill
the caller, and nothing here ever exits the process.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from dataclasses import dataclass

from . import config as config_mod
from .ack import Ack, AckError, decode_ack
from .errors import TelemetryError
from .hints import opt_in_phrase, start_phrase
from .limits import ACK_MAX, ACK_TIMEOUT, CONNECT_TIMEOUT, SUN_PATH_MAX
from .optin import is_opted_in
from .paths import Paths
from .record import Record
from .wire import encode_frame


class SendError(TelemetryError):
    """The record did not reach the daemon, or the daemon did not keep it."""


class NotOptedIn(SendError):
    def __init__(self, paths: Paths):
        super().__init__(f"not opted in to telemetry ({paths.opt_in_file} is missing); "
                         f"run {opt_in_phrase(paths)} first")


class DaemonUnavailable(SendError):
    pass


class RecordRejected(SendError):
    def __init__(self, ack: Ack):
        super().__init__(f"telemprobd refused the record: {ack}")
        self.ack = ack


@dataclass(frozen=True)
class Credentials:
    """The process a record is sent on behalf of.  Only a sender with the privilege to state
    them (root: CAP_SETUID, CAP_SETGID, CAP_SYS_ADMIN for another pid) may; the kernel
    checks, and telemprobd then counts the record in that user's share of the rate limits.
    crashprobe sends each crash report on behalf of the user whose process crashed."""

    pid: int
    uid: int
    gid: int

    def ancillary(self, pid: int | None = None) -> list[tuple[int, int, bytes]]:
        """SCM_CREDENTIALS (struct ucred) for sendmsg."""
        creds = struct.pack("iII", self.pid if pid is None else pid, self.uid, self.gid)
        return [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)]


class Client:
    """Holds the paths and the config (and -f path, sent as the CFG: field like the original)."""

    def __init__(
        self,
        paths: Paths | None = None,
        config: config_mod.Config | None = None,
        config_file: str | None = None,
    ):
        self.paths = paths or Paths.detect()
        self.config_file = config_file
        self.config = config or config_mod.load(self.paths, config_file)

    @property
    def socket_path(self) -> str:
        return self.config.socket_path

    def frame(self, record: Record) -> bytes:
        return encode_frame(record.header_block(), record.payload, self.config_file)

    def send(self, record: Record, timeout: float = ACK_TIMEOUT, on_behalf_of: Credentials | None = None) -> Ack:
        """Send and wait for the verdict; raises `SendError` unless the record was kept."""
        if not is_opted_in(self.paths):
            raise NotOptedIn(self.paths)
        ack = self.send_frame(self.frame(record), timeout, on_behalf_of)
        if not ack.kept:
            raise RecordRejected(ack)
        return ack

    def send_frame(self, frame: bytes, timeout: float = ACK_TIMEOUT, on_behalf_of: Credentials | None = None) -> Ack:
        path = self.socket_path
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise SendError(f"socket path {path} is longer than {SUN_PATH_MAX} bytes")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            try:
                sock.connect(path)
            except (FileNotFoundError, ConnectionRefusedError) as e:
                raise DaemonUnavailable(
                    f"telemprobd is not listening on {path} ({e.strerror}); {start_phrase(self.paths)}"
                ) from None
            except OSError as e:
                raise DaemonUnavailable(f"cannot connect to telemprobd at {path}: {e.strerror or e}") from None
            deadline = time.monotonic() + timeout
            sock.settimeout(timeout)
            write_error: OSError | None = None
            try:
                sent = _send_credentials(sock, frame, on_behalf_of) if on_behalf_of is not None else 0
                sock.sendall(frame[sent:])
                sock.shutdown(socket.SHUT_WR)
            except OSError as e:  # the daemon may have refused early; its reply says why
                if e.errno not in (errno.EPIPE, errno.ECONNRESET) and not isinstance(e, TimeoutError):
                    raise SendError(f"error writing to telemprobd: {e.strerror or e}") from None
                write_error = e
            reply = _read_reply(sock, deadline)
        finally:
            sock.close()
        if write_error is not None and not reply:
            raise SendError("telemprobd closed the connection before the record was written")
        try:
            return decode_ack(reply)
        except AckError as e:
            raise SendError(str(e)) from None


def _send_credentials(sock: socket.socket, frame: bytes, creds: Credentials) -> int:
    """The frame's first bytes with `creds` attached; what was sent.  A pid that is gone
    (a crashed process already reaped) is replaced by ours; a sender not allowed to state
    them sends as itself (0: nothing sent yet)."""
    for pid in (creds.pid, os.getpid()):
        try:
            return sock.sendmsg([frame], creds.ancillary(pid))
        except ProcessLookupError:
            continue
        except PermissionError:
            return 0
    return 0


def _read_reply(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while len(data) < ACK_MAX and not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SendError("no acknowledgement from telemprobd in time; the record may not be kept")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(ACK_MAX - len(data))
        except TimeoutError:
            raise SendError("no acknowledgement from telemprobd in time; the record may not be kept") from None
        except ConnectionResetError:
            # Only a clean close is an original telemprobd's silent accept.  A reset means the
            # daemon closed with part of the frame unread: it refused it, or (ours) died
            # before the acknowledgement.
            if data:
                break
            raise SendError("telemprobd closed the connection without acknowledging the record "
                            "(it may have stopped); the record may not be kept") from None
        if not chunk:
            break
        data += chunk
    return data


def send(record: Record, *, paths: Paths | None = None, config_file: str | None = None,
         timeout: float = ACK_TIMEOUT) -> Ack:
    return Client(paths, config_file=config_file).send(record, timeout)
