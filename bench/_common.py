"""Parts the benches share: ~1 KB frames, the C sender, the local collector, a read-only
look at the queue, and the original C daemons started with their own config.

Not a bench itself (`make bench` skips files starting with `_`)."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from telemetry.daemons.store.queue import QUEUE_DB, QUEUE_SUBDIR  # noqa: E402

# --- frames ------------------------------------------------------------------------------------

HEADERS = (
    ("record_format_version", "4"), ("classification", "org.example/bench/ingest"), ("severity", "2"),
    ("machine_id", "FFFFFFFF"), ("creation_timestamp", "1700000000"), ("arch", "x86_64"),
    ("host_type", "QEMU|Standard PC (i440FX + PIIX, 1996)|pc-i440fx-3.1"), ("build", "41000"),
    ("kernel_version", "6.6.1-1.native"), ("payload_format_version", "1"), ("system_name", "clear-linux-os"),
    ("board_name", "blank|blank"), ("cpu_model", "Intel(R) Core(TM) i7-7600U CPU @ 2.80GHz"),
    ("bios_version", "1.16.1-1"),
)


def frame(i: int, payload_len: int = 560) -> bytes:
    """A C-layout frame of about 1 KB (struct-packed, as libtelemetry writes it)."""
    hb = "".join(f"{n}: {v}\n" for n, v in HEADERS).encode() + f"event_id: {i:032x}\n".encode()
    payload = (f"record {i} " * 100).encode()[:payload_len]
    size = 4 + 4 + len(hb) + len(payload) + 1
    return struct.pack("<II", size, len(hb)) + hb + payload + b"\0"


# Our telemprobd with no limit that could refuse a bench's records.
OUR_INGEST_CONFIG = ("spool_max_size=-1\nrecord_burst_limit=1000000000\nbyte_burst_limit=1000000000000\n"
                     "rate_limit_uid_share=100\nlog_level=error\nmax_connections=256\n")


# --- the C sender ------------------------------------------------------------------------------

C_SENDER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
/* sender SOCKET FRAMES_FILE START_FD HALF_CLOSE EOF_OK [SECONDS RATE COUNTER_FILE]
   Frames are u32 length + bytes; prints one latency (microseconds) per frame on stdout and
   the number acknowledged on stderr; EOF_OK 1: a close without a reply counts (the original
   daemon never replies).  With SECONDS: the frames are sent over and over until SECONDS
   have passed, at most RATE per second (0: as fast as acknowledged), and the number
   acknowledged so far is kept in the 8 bytes of COUNTER_FILE for a reader to sample. */
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    if (argc != 6 && argc != 9) return 2;
    FILE *f = fopen(argv[2], "rb"); if (!f) return 2;
    fseek(f, 0, SEEK_END); long n = ftell(f); fseek(f, 0, SEEK_SET);
    char *buf = malloc(n ? n : 1); if (fread(buf, 1, n, f) != (size_t)n) return 2; fclose(f);
    double seconds = argc == 9 ? atof(argv[6]) : 0, rate = argc == 9 ? atof(argv[7]) : 0;
    volatile int64_t *counter = NULL;
    if (argc == 9) {
        int cfd = open(argv[8], O_RDWR); if (cfd < 0) return 2;
        counter = mmap(NULL, 8, PROT_READ | PROT_WRITE, MAP_SHARED, cfd, 0);
        if (counter == MAP_FAILED) return 2;
    }
    char go; if (read(atoi(argv[3]), &go, 1) != 1) return 2;
    int half = atoi(argv[4]), eof_ok = atoi(argv[5]);
    struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX;
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    long off = 0, ok = 0, sent = 0; char reply[512];
    double start = now();
    while (off < n) {
        if (seconds > 0 && now() - start >= seconds) break;
        if (rate > 0) {
            double wait = start + sent / rate - now();
            if (wait > 0) { struct timespec t = { (time_t)wait, (long)((wait - (time_t)wait) * 1e9) }; nanosleep(&t, NULL); }
        }
        uint32_t len; memcpy(&len, buf + off, 4); off += 4;
        double t0 = now();
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
            ssize_t w = 0;
            while (w < (ssize_t)len) { ssize_t r = send(s, buf + off + w, len - w, MSG_NOSIGNAL); if (r <= 0) break; w += r; }
            if (half) shutdown(s, SHUT_WR);
            ssize_t r = recv(s, reply, sizeof reply, 0);
            if ((r >= 13 && memcmp(reply, "TM/1 accepted", 13) == 0) || (r == 0 && eof_ok)) ok++;
        }
        close(s);
        sent++;
        if (counter) *counter = ok;
        printf("%.1f\n", (now() - t0) * 1e6);
        off += len;
        if (seconds > 0 && off >= n) off = 0;
    }
    fprintf(stderr, "%ld\n", ok);
    return 0;
}
"""


def build_c_sender(directory: str) -> str | None:
    """The C sender compiled in `directory`, or None without a working gcc."""
    src, exe = os.path.join(directory, "sender.c"), os.path.join(directory, "sender")
    with open(src, "w") as f:
        f.write(C_SENDER)
    try:
        r = subprocess.run(["gcc", "-O2", "-o", exe, src], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return exe if r.returncode == 0 else None


def write_frames(name: str, frames: list[bytes]) -> str:
    """`frames` in the sender's file layout (u32 length, then the frame)."""
    with open(name, "wb") as f:
        for fr in frames:
            f.write(struct.pack("<I", len(fr)) + fr)
    return name


# --- the local collector -------------------------------------------------------------------------

NGINX_CONF = """{user}worker_processes 1;
error_log {d}/nginx-error.log;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    {access_log}
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 201; }}
    }}
}}
"""

# One two-byte line per request: the count is the file's size / 2.
COUNT_LOG_FORMAT = 'log_format count "x";\n    access_log {path} count;'

PY_SERVER = """
import http.server, sys
log = open(sys.argv[2], "ab", buffering=0) if len(sys.argv) > 2 else None
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(201); self.send_header("Content-Length", "0"); self.end_headers()
        if log: log.write(b"x\\n")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"collector exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("collector did not start listening")


def start_collector(root: str, port: int, count_log: str | None = None) -> tuple[subprocess.Popen, str]:
    """A collector stand-in on 127.0.0.1:`port` answering 201 to every POST: nginx when it
    is installed, else a Python http.server (much slower).  With `count_log`, one 2-byte
    line per request is appended there (`delivered_count`)."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx:
        conf = os.path.join(root, "nginx.conf")
        user = "user root root;\n" if os.geteuid() == 0 else ""
        access_log = COUNT_LOG_FORMAT.format(path=count_log) if count_log else "access_log off;"
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(user=user, d=root, port=port, access_log=access_log))
        proc = subprocess.Popen([nginx, "-c", conf, "-p", root, "-g", "daemon off;"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        name = f"nginx ({subprocess.run([nginx, '-v'], capture_output=True, text=True).stderr.strip()})"
    else:
        proc = subprocess.Popen([sys.executable, "-c", PY_SERVER, str(port), *([count_log] if count_log else [])])
        name = "Python http.server (ThreadingHTTPServer; nginx not installed)"
    wait_port(port, proc)
    return proc, name


def delivered_count(count_log: str) -> int:
    """Requests the collector answered so far (see `start_collector`)."""
    try:
        return os.stat(count_log).st_size // 2
    except FileNotFoundError:
        return 0


# --- our queue, processes ------------------------------------------------------------------------

class QueueReader:
    """A read-only look at the queue that never takes a write lock from the daemon."""

    def __init__(self, spool: str):
        self.db = sqlite3.connect(f"file:{os.path.join(spool, QUEUE_SUBDIR, QUEUE_DB)}?mode=ro", uri=True,
                                  isolation_level=None)

    def queued(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def counter(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE daemon = 'telempostd' AND name = ?",
                              (name,)).fetchone()
        return row[0] if row else 0


def queue_path(spool: str) -> str:
    return os.path.join(spool, QUEUE_SUBDIR, QUEUE_DB)


def cpu(p: psutil.Process) -> float:
    """User + system CPU seconds of `p` so far."""
    t = p.cpu_times()
    return t.user + t.system


# --- the original C daemons ----------------------------------------------------------------------

def c_daemons_command(prefix: str, root: str, config: str, programs: list[str]) -> list[str]:
    """A command running the original C daemons `programs` (names under `prefix`/bin) with
    `config` as their telemetrics.conf, as root in a private mount namespace.

    The originals read only the defaults file under their build prefix (telemprobd's -f
    sets the library's file, not the daemon's), keep their machine id under it and their
    journal in /var/log/telemetry: the prefix is rebuilt on a tmpfs with its own
    directories bound back in, `config` over the defaults file, an empty var/; a tmpfs over
    /var/log.  (An overlayfs does the same in one mount but made every open of the machine
    id cost half a millisecond here.)  The command's process waits for the daemons; they
    are its descendants, named as their programs."""
    prefix = os.path.abspath(prefix)
    conf, orig = os.path.join(root, "conf"), os.path.join(root, "orig")
    os.makedirs(conf)
    os.makedirs(orig)
    with open(os.path.join(conf, "telemetrics.conf"), "w") as f:
        f.write(config)
    binds = " && ".join(f"mkdir {prefix}/{d} && mount --bind {orig}/{d} {prefix}/{d}"
                        for d in sorted(os.listdir(prefix)))
    run = (f"exec {prefix}/bin/{programs[0]}" if len(programs) == 1 else
           "{ " + " ".join(f"{prefix}/bin/{p} &" for p in programs) + " wait; }")
    script = (f"mount --bind {prefix} {orig} && mount -t tmpfs tmpfs {prefix} && {binds} && "
              f"mount --bind {conf} {prefix}/share/defaults/telemetrics && mkdir -p {prefix}/var/lib/telemetry "
              f"&& mount -t tmpfs tmpfs /var/log && mkdir /var/log/telemetry && {run}")
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script]


def c_daemon_processes(launcher: subprocess.Popen, programs: list[str], timeout: float = 20) -> dict[str, psutil.Process]:
    """The running C daemons started by `launcher` (see `c_daemons_command`), by program."""
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        me = psutil.Process(launcher.pid)
        for p in [me, *me.children(recursive=True)]:
            try:
                if p.name() in programs:
                    found[p.name()] = p
            except psutil.NoSuchProcess:
                pass
        if len(found) == len(programs):
            return found
        if launcher.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the original {' and '.join(programs)} did not start (root is needed)")
        time.sleep(0.05)
