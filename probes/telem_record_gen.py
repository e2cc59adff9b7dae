"""telem-record-gen: build one custom record from the command line and send it.

The checks run in the original's order with its messages (`check_options`, pure).  Unlike
the other probes, it exits 1 when telemetry is not opted in, as the original does: its
caller asked for this record to be sent.  Two things differ on purpose: a payload over the 8192-byte limit is an error instead of being
cut silently (`--truncate` cuts it at a UTF-8 boundary), and an unknown option is an
error instead of being ignored.
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass

from telemetry import cli
from telemetry.cli import MODE, VERSION, ConfigFile, command_attribute, program_main
from telemetry.limits import (
    CLASSIFICATION_FIRST_SEGMENT_MAX,
    CLASSIFICATION_MAX,
    CLASSIFICATION_SEGMENT_MAX,
    EVENT_ID_LEN,
    PAYLOAD_FORMAT_VERSION_MAX,
    PAYLOAD_MAX,
    SEVERITY_MAX,
    SEVERITY_MIN,
)
from telemetry.options import Options as OptionTable
from telemetry.options import flag, value
from telemetry.record import RecordError

from .common import EXIT_FAILURE, EXIT_OK, Probe

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see telemetry/__init__.py)
if TYPE_CHECKING:
    from typing import BinaryIO

    from .probe_cli import ProbeCommand

NAME = "telem-record-gen"
ULONG_MAX = 2**64 - 1
EVENT_ID_ALPHABET = "0123456789abcdef"

USAGE = """\
Usage:
  telem-record-gen [OPTIONS] - create and send a custom telemetry record

Help Options:
  -h, --help            Show help options

Application Options:
  -V, --version         Print the program version
  -s, --severity        Severity level (1-4) - (default 1)
  -c, --class           Classification level_1/level_2/level_3 (required)
  -p, --payload         Record body (max size = 8k) (required)
  -P, --payload-file    File to read payload from
  -R, --record-version  Version number for format of payload (default 1)
  -e, --event-id        Event id to use in the record
  -o, --echo            Echo record to stdout
  -n, --no-post         Do not post record just print
  -f, --config_file     Specify a configuration file other than default
      --truncate        Cut a payload over 8192 bytes instead of refusing it
      --user            Send to your own daemons (telemctl --user start)
      --system          Send to the system daemons

"""

_STRTOUL = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)")


class OptionError(Exception):
    """A bad option value; the message is the original's."""


def parse_number(text: str, what: str) -> int:
    """strtoul(text, 10) as the original reads it, a negative wrapping around."""
    if text == "":
        return 0
    m = _STRTOUL.fullmatch(text)
    if not m:
        raise OptionError(f"Invalid {what} number. Must be an integer")
    value = int(m.group(2))
    if value > ULONG_MAX:
        raise OptionError(f"Failed to convert {what} number: Numerical result out of range")
    return (-value) % (ULONG_MAX + 1) if m.group(1) == "-" else value


@dataclass(frozen=True)
class Options:
    classification: str | None
    severity: int = 1
    record_version: int = 1
    event_id: str | None = None


def check_options(opts: Options) -> None:
    """The original's validation, in its order; raises OptionError with its message."""
    cls = opts.classification
    if cls is None:
        raise OptionError("Error: Classification required. See --help.")
    if not 1 <= len(cls) <= CLASSIFICATION_MAX:
        raise OptionError(f"Error: Valid size for classification is 1-{CLASSIFICATION_MAX} chars")
    if not cls.isascii():
        raise OptionError("Error: Non-ascii characters detected in classification - aborting")
    segments = cls.split("/")
    if len(segments[0]) > CLASSIFICATION_FIRST_SEGMENT_MAX or any(
        len(s) > CLASSIFICATION_SEGMENT_MAX for s in segments[1:]
    ):
        raise OptionError(
            f"Error: Classification strings between slashes should have at most {CLASSIFICATION_SEGMENT_MAX} chars"
        )
    if len(segments) != 3:
        raise OptionError("Error: Classification needs to be in most/to/least specific format, 2 '/' required.")
    if not SEVERITY_MIN <= opts.severity <= SEVERITY_MAX:
        raise OptionError(f"Error: Valid range for severity is {SEVERITY_MIN}-{SEVERITY_MAX}")
    if opts.record_version > PAYLOAD_FORMAT_VERSION_MAX:
        raise OptionError(f"Error: Valid range for record-version is 0-{PAYLOAD_FORMAT_VERSION_MAX}")
    if opts.event_id is not None:
        eid = opts.event_id
        if len(eid) != EVENT_ID_LEN:
            raise OptionError(f"Error: event_id length {len(eid)} it should have {EVENT_ID_LEN} characters")
        for i, ch in enumerate(eid):
            if ch not in EVENT_ID_ALPHABET:
                raise OptionError(
                    f"Error: event_id contains invalid character '{ch}' at position {i}, "
                    f"valid characters are {EVENT_ID_ALPHABET}"
                )


def read_limited(stream: BinaryIO, limit: int) -> bytes:
    """At most limit+1 bytes, so that "over the limit" can be told from "at the limit"."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def payload_from(payload: str | None, payload_file: str | None, truncate: bool) -> bytes:
    """-P, else -p, else stdin (the original's order).  More than PAYLOAD_MAX bytes is an
    error unless `truncate`: the record is then built with truncate=True, which cuts it."""
    if payload_file is not None:
        try:
            with open(payload_file, "rb") as f:
                data = read_limited(f, PAYLOAD_MAX)  # type: ignore[arg-type]
        except OSError:
            raise OptionError(f"Error: file {payload_file} could not be opened for reading") from None
        if len(data) > PAYLOAD_MAX and not truncate:
            raise OptionError(
                f"Error: payload file {payload_file} is larger than {PAYLOAD_MAX} bytes (the limit); "
                "use --truncate to cut it"
            )
        return data
    if payload is not None:
        raw = payload.encode("utf-8", errors="surrogateescape")
        if len(raw) > PAYLOAD_MAX and not truncate:
            raise OptionError(
                f"Error: payload is {len(raw)} bytes; the limit is {PAYLOAD_MAX} (use --truncate to cut it)"
            )
        return raw
    data = read_limited(sys.stdin.buffer, PAYLOAD_MAX)
    if len(data) > PAYLOAD_MAX:
        if not truncate:
            raise OptionError(
                f"Error: payload on standard input is larger than {PAYLOAD_MAX} bytes (the limit); "
                "use --truncate to cut it"
            )
        while sys.stdin.buffer.read(1 << 16):
            pass
    return data


# The man page's text; --help prints the original's USAGE.
HELP = """Create one telemetry record and send it to telemprobd, or print it.

The classification (-c) is three parts separated by slashes; the severity (-s) is 1 to 4;
the payload comes from -p, else from the file -P, else from standard input.  A payload
over 8192 bytes is refused, unless --truncate cuts it.  -o also prints the record (its
header lines and payload) on standard output, -n only prints it.  Nothing is sent until
telemetry is opted in ('telemctl opt-in')."""

EPILOG = """\b
Exit status:
  0  telemprobd kept the record (or -n printed it), or telemetry is not opted in
  1  a bad option or payload, or the record was not kept (the message says why)

\b
Examples:
  telem-record-gen -c org.example/demo/hello -p 'it works'
  dmesg | telem-record-gen -c org.example/kernel/dmesg -s 2 --truncate
  telem-record-gen -c org.example/demo/test -p test -n   print the record, send nothing
"""


OPTIONS = OptionTable(
    VERSION,
    value("severity_text", "-s", "--severity", metavar="N"),
    value("classification", "-c", "--class", metavar="STR"),
    value("payload", "-p", "--payload", metavar="STR"),
    value("payload_file", "-P", "--payload-file", metavar="PATH"),
    value("version_text", "-R", "--record-version", metavar="N"),
    value("event_id", "-e", "--event-id", metavar="HEX32"),
    flag("echo", "-o", "--echo"),
    flag("no_post", "-n", "--no-post"),
    MODE,
    ConfigFile("-f", "--config-file", "--config_file"),
    flag("truncate", "--truncate"),
)


def send_record(
    mode: str | None, severity_text: str | None, classification: str | None, payload: str | None,
    payload_file: str | None, version_text: str | None, event_id: str | None, echo: bool, no_post: bool,
    config_file: str | None, truncate: bool,
) -> int:
    try:
        severity = parse_number(severity_text, "severity") if severity_text is not None else 1
        version = parse_number(version_text, "record-version") if version_text is not None else 1
        check_options(Options(classification, severity, version, event_id))
        body = payload_from(payload, payload_file, truncate)
    except OptionError as e:
        cli.echo(str(e), err=True)
        return EXIT_FAILURE
    probe = Probe(NAME, config_file, mode=mode)
    assert classification is not None
    try:
        record = probe.record(classification, severity, body, version, event_id=event_id, truncate=truncate)
    except RecordError as e:
        cli.echo(f"Error: {e}", err=True)
        return EXIT_FAILURE
    if echo:
        out = sys.stdout.buffer
        out.write(record.header_block() + record.payload + b"\n")
        out.flush()
    if no_post:
        return EXIT_OK
    result = probe.send(record)
    if not result.sent:  # not opted in too: whoever ran it asked for a record (exit 1, as the original)
        cli.echo(f"Unable to send record: {result.message}", err=True)
        return EXIT_FAILURE
    if result.deferred:
        probe.log.info("record queued by the daemon for later: over the rate limit, it is delivered "
                       "when the limit allows")
    return EXIT_OK


@functools.cache
def _command() -> ProbeCommand:
    from .probe_cli import probe_command

    return probe_command(NAME, OPTIONS, send_record, usage_text=USAGE, help=HELP, epilog=EPILOG,
                         short_help="create and send a custom telemetry record")


main = program_main(NAME, OPTIONS, send_record, _command)
__getattr__ = command_attribute(__name__, _command)


if __name__ == "__main__":
    main()
