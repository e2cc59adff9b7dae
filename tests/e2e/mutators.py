"""Seeded mutators for the hostile-input scenarios, and what counts as a header of our own.

Pure: a seed and a sound input in, damaged inputs out; no I/O.  `FrameMutator` damages
libtelemetry frames (sizes, bits, header lines, CFG field, payload, framing) and
`RowMutator` damages queue rows (types and contents of every column).
"""

from __future__ import annotations

import random
import struct
import time

from telemprobd_harness import HEADER_NAMES, c_frame, good_headers

from telemetry.limits import FRAME_MAX, PAYLOAD_MAX

HOSTILE_VALUES: tuple[str, ...] = (
    "a\r\nX-Injected: 1",
    "a\nX-Injected: 1",
    "a\rX-Injected: 1",
    "\x00",
    "x" * 600,
    "\u2028X-Injected: 1",
    "\x85X-Injected: 1",
    "\x1b[2J",
    "",
    " ",
)
# Header names a request of ours may carry: the record's fields, the TID, the record id,
# and what curl and HTTP/1.1 add.  Anything else came from a value.
ALLOWED_HEADERS = frozenset(h.lower() for h in (
    "Host", "User-Agent", "Accept", "Content-Type", "Content-Length", "X-Telemetry-TID", "X-Telemetry-Record-Id",
    "Record-Format-Version", "Classification", "Severity", "Machine-Id", "Creation-Timestamp", "Arch", "Host-Type",
    "Build", "Kernel-Version", "Payload-Format-Version", "System-Name", "Board-Name", "Cpu-Model", "Bios-Version",
    "Event-Id",
))


def foreign_headers(received) -> list[tuple[str, str]]:
    """Header lines the collector got that no record field, TID or record id explains, or
    that arrived twice, or that carry a line break."""
    bad = []
    for r in received:
        seen: dict[str, int] = {}
        for name, value in r.headers:
            low = name.lower()
            seen[low] = seen.get(low, 0) + 1
            if low not in ALLOWED_HEADERS or seen[low] > 1 or "\r" in value or "\n" in value:
                bad.append((name, value))
    return bad


class RowMutator:
    """Seeded: a sound queue row in, a damaged one out (1-3 changes of type or content)."""
    COLUMNS = ("record_id", "received_at", "sender_uid", "sender_gid", "sender_pid", "cfg_path", "headers",
               "payload", "size", "deferred_until", "attempts", "next_attempt_at", "last_error")

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def _bytes(self, n: int) -> bytes:
        return bytes(self.rng.getrandbits(8) for _ in range(n))

    def _headers(self, block: bytes) -> object:
        r = self.rng
        lines = block.split(b"\n")[:-1]
        kind = r.randrange(11)
        if kind == 0:  # bit flips
            data = bytearray(block)
            for _ in range(r.randint(1, 4)):
                data[r.randrange(len(data))] ^= 1 << r.randrange(8)
            return bytes(data)
        if kind == 1:
            return block[: r.randrange(len(block))]
        if kind == 2:
            return self._bytes(r.randrange(1, 900))
        if kind == 3:  # a hostile value in a random field
            i = r.randrange(len(lines))
            name = lines[i].split(b":", 1)[0]
            value = r.choice(HOSTILE_VALUES).encode("utf-8", errors="surrogatepass")
            lines[i] = name + b": " + value
            return b"\n".join(lines) + b"\n"
        if kind == 4:  # invalid UTF-8 in a value
            i = r.randrange(len(lines))
            lines[i] += b"\xff\xfe"
            return b"\n".join(lines) + b"\n"
        if kind == 5:
            i = r.randrange(len(lines))
            lines.insert(i, lines[i])
            return b"\n".join(lines) + b"\n"
        if kind == 6:
            del lines[r.randrange(len(lines))]
            return b"\n".join(lines) + b"\n"
        if kind == 7:
            i, j = r.randrange(len(lines)), r.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            return b"\n".join(lines) + b"\n"
        if kind == 8:
            return block.decode("utf-8", errors="replace")  # TEXT instead of BLOB
        if kind == 9:
            return r.choice((0, -1, 2**62, 1.5))
        return b""

    def _value(self, column: str, row: dict) -> object:
        r = self.rng
        if column == "headers":
            return self._headers(row["headers"])
        if column == "payload":
            return r.choice((b"\xff\xfe", b"a\0b", b"x" * 9000, "text payload", 42, b"",
                             bytes(r.getrandbits(8) for _ in range(50))))
        if column == "record_id":
            return r.choice((f"id\r\nX-Injected: {r.random()}", f"{r.random()}" * 10, "", f"\u00e9t\u00e9{r.random()}",
                             f"with space {r.random()}", self._bytes(16)))
        if column in ("received_at", "deferred_until", "next_attempt_at"):
            return r.choice(("yesterday", float("inf"), float("-inf"), 1e300, -1e300, 0, -5, self._bytes(4),
                             time.time() + 1e6, 2**62))
        if column in ("sender_uid", "sender_gid", "sender_pid", "size", "attempts"):
            return r.choice(("many", -1, 2**62, -(2**62), 1e300, self._bytes(3), 0))
        return r.choice((self._bytes(20), "x" * 5000, "\r\n", 7))

    def mutate(self, row: dict) -> tuple[dict, tuple[str, ...]]:
        out = dict(row)
        changed = tuple(self.rng.sample(self.COLUMNS, self.rng.randint(1, 3)))
        for column in changed:
            out[column] = self._value(column, row)
        return out, changed


class FrameMutator:
    """Seeded: frames a probe could send, most of them damaged."""
    INTERESTING_U32 = (0, 1, 4, 8, 9, 10, 0x7F, 0x80, 0xFF, 0x100, 0x1000, PAYLOAD_MAX, FRAME_MAX - 1, FRAME_MAX,
                       FRAME_MAX + 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.n = 0

    def _text(self, n: int) -> bytes:
        alphabet = "abcdefghij klmnop\tqrstuvwxyz0123456789.,;:-é中\n"
        return "".join(self.rng.choice(alphabet) for _ in range(n)).encode()[:n]

    def sound(self) -> bytes:
        r = self.rng
        self.n += 1
        headers = good_headers(event_id=f"{r.getrandbits(128):032x}", severity=str(r.randint(1, 4)),
                               classification=f"org.example/fuzz/f{self.n % 97}")
        payload = self._text(r.choice((0, 1, 10, 100, 1000, 4000, PAYLOAD_MAX)))
        return c_frame(headers, payload)

    def frame(self) -> bytes:
        r = self.rng
        base = bytearray(self.sound())
        kind = r.randrange(14)
        if kind == 0:
            return bytes(base)
        if kind == 1:
            for _ in range(r.randint(1, 8)):
                base[r.randrange(len(base))] ^= 1 << r.randrange(8)
            return bytes(base)
        if kind == 2:
            i = r.randrange(len(base))
            op = r.randrange(3)
            if op == 0:
                base[i:i] = bytes([r.getrandbits(8)]) * r.randint(1, 16)
            elif op == 1:
                del base[i:i + r.randint(1, 16)]
            else:
                base[i:i] = base[i:i + r.randint(1, 64)]
            return bytes(base)
        if kind == 3:
            return bytes(base[: r.randrange(len(base))])
        if kind == 4:
            struct.pack_into("<I", base, 0, r.choice(self.INTERESTING_U32 + (len(base) - 1, len(base) + 1)))
            return bytes(base)
        if kind == 5:
            struct.pack_into("<I", base, 4, r.choice(self.INTERESTING_U32))
            return bytes(base)
        if kind == 6:
            junk = bytes(r.getrandbits(8) for _ in range(r.randrange(0, 2000)))
            if junk and r.random() < 0.5:
                junk = struct.pack("<I", len(junk) + 4) + junk
            return junk
        if kind == 7:  # a hostile value in one field, sizes consistent
            field = r.choice(HEADER_NAMES)
            value = r.choice(HOSTILE_VALUES).encode("utf-8", errors="surrogatepass")
            block = b"".join(n.encode() + b": " + (value if n == field else v.encode()) + b"\n"
                             for n, v in good_headers())
            return c_frame(block, b"payload")
        if kind == 8:  # header lines swapped, dropped, repeated, renamed
            lines = [f"{n}: {v}".encode() for n, v in good_headers()]
            i, j = r.randrange(len(lines)), r.randrange(len(lines))
            op = r.randrange(4)
            if op == 0:
                lines[i], lines[j] = lines[j], lines[i]
            elif op == 1:
                del lines[i]
            elif op == 2:
                lines.insert(i, lines[j])
            else:
                lines[i] = lines[i].upper()
            return c_frame(b"\n".join(lines) + b"\n", b"payload")
        if kind == 9:  # the CFG: field
            path = r.choice((b"/etc/t.conf", b"relative.conf", b"/" + b"p" * 5000, b"/\xff\xfe", b""))
            frame = c_frame(good_headers(), b"payload", cfg=path)
            if r.random() < 0.3:  # no NUL after the path
                frame = frame.replace(path + b"\0", path + b"X", 1)
            return frame
        if kind == 10:  # the payload
            payload = r.choice((b"a\0b", b"\xff\xfe", b"x" * (PAYLOAD_MAX + 1), b"x" * PAYLOAD_MAX, b"\r\n\r\n"))
            return c_frame(good_headers(), payload)
        if kind == 11:  # two frames, or trailing bytes
            return bytes(base) + (self.sound() if r.random() < 0.5 else b"\0" * r.randint(1, 9))
        if kind == 12:  # a size beyond what is sent
            struct.pack_into("<I", base, 0, len(base) + r.randint(1, 100))
            return bytes(base)
        return b""
