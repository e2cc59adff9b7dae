"""`make demo`: show what this machine would send, then run the pipeline in user mode."""

from __future__ import annotations

import sys

from .record import create_record
from .wire import encode_frame


def main() -> int:
    record = create_record("org.clearlinux/hello/world", 1, "hello\n")
    print("== The record the library builds on this machine (Version 4 headers + payload):")
    sys.stdout.write(record.header_block().decode())
    sys.stdout.write(record.payload.decode())
    frame = encode_frame(record.header_block(), record.payload)
    print(f"== Socket frame: {len(frame)} bytes, header_size {len(record.header_block())}, first bytes {frame[:8].hex(' ')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
