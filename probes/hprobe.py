"""hprobe: the hello-world / heartbeat record that shows the pipeline works end to end.

`hello_payload` is the pure part (the original's payload layout, 8191 bytes at most);
`send_hello` reads the locale, the uptime and the bundle list and sends.  The command
line is read without click unless it asks for help or is wrong (telemetry.options).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence

from telemetry.cli import MODE, VERSION, ConfigFile, command_attribute, echo, program_main
from telemetry.options import Options, flag, value

from .common import EXIT_FAILURE, EXIT_OK, Probe

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see telemetry/__init__.py)
if TYPE_CHECKING:
    from .probe_cli import ProbeCommand

NAME = "hprobe"

CLASS_HELLO = "org.clearlinux/hello/world"
CLASS_HEARTBEAT = "org.clearlinux/heartbeat/ping"
SEVERITY = 1
PAYLOAD_VERSION = 1
BUNDLES_DIR = "/usr/share/clear/bundles"
# The original builds the payload in an 8192-byte C buffer: 8191 characters and the NUL.
BUFFER_TEXT_MAX = 8191
OVERFLOW_MARK = "\n..."

USAGE = """\
%s: Usage
  -f,  --config_file    Configuration file. This overides the other parameters
  -H,  --heartbeat      Create a "heartbeat" record instead
  -h,  --help           Display this help message
  -l,  --locale         Include locale in the record
  -u,  --uptime         Include uptime in the record
  -b,  --bundles        Include installed bundles in the record
  -V,  --version        Print the program version
       --bundles-dir    Directory of installed bundles (default /usr/share/clear/bundles)
       --user           Send to your own daemons (telemctl --user start)
       --system         Send to the system daemons
"""


class BundlesError(Exception):
    pass


def hello_payload(
    lc_all: str | None = None, uptime: int | None = None, bundles: Sequence[str] | None = None
) -> str:
    """hello, then the optional sections; a bundle list that would overflow ends in `\\n...`."""
    text = "hello\n"
    if lc_all is not None:
        text += f"LC_ALL: {lc_all}\n"
    if uptime is not None:
        text += f"uptime: {uptime}\n"
    if bundles is not None:
        names = sorted(b for b in bundles if not b.startswith("."))
        text += f"\nBundles ({len(names)}):\n"
        for name in names:
            line = f"{name}\n"
            if len((text + line).encode()) > BUFFER_TEXT_MAX:
                cut = (text + line).encode()[: BUFFER_TEXT_MAX - len(OVERFLOW_MARK)]
                text = cut.decode("utf-8", errors="ignore") + OVERFLOW_MARK
                break
            text += line
    return text


def current_locale() -> str:
    """The LC_ALL name after setting the locale from the environment, as setlocale reports it."""
    import locale

    try:
        locale.setlocale(locale.LC_ALL, "")
    except locale.Error:
        pass
    return locale.setlocale(locale.LC_ALL, None)


def uptime_seconds() -> int:
    try:
        return int(time.clock_gettime(time.CLOCK_BOOTTIME))
    except OSError:
        return 0


def list_bundles(directory: str) -> list[str]:
    """Names as text: one that is not UTF-8 shows U+FFFD where its bad bytes were (the
    payload must be UTF-8)."""
    try:
        with os.scandir(os.fsencode(directory)) as it:
            return [e.name.decode("utf-8", errors="replace") for e in it]
    except OSError as e:
        raise BundlesError(f"scandir failed: {directory}: {e.strerror}") from None


# The man page's text; --help prints the original's USAGE.
HELP = """Send the hello-world record (org.clearlinux/hello/world), or with -H the heartbeat
(org.clearlinux/heartbeat/ping), to telemprobd: the check that the pipeline works end to end.

-l adds the locale, -u the uptime and -b the installed bundles (the names in --bundles-dir).
hprobe.timer sends the heartbeat with locale and uptime once a day.  As every probe,
hprobe sends nothing, and exits 0, until telemetry is opted in ('telemctl opt-in')."""

EPILOG = """\b
Exit status:
  0  telemprobd kept the record, or telemetry is not opted in (nothing sent)
  1  a bad option, or the record was not kept (telemprobd not running, rate-limited, ...;
     the message says why)

\b
Examples:
  hprobe                        send the hello-world record
  hprobe -Hlu                   the heartbeat with locale and uptime (as hprobe.service)
  hprobe -f /root/test.conf     with another configuration file (its socket_path, say)
"""


OPTIONS = Options(
    MODE,
    ConfigFile("-f", "--config_file"),
    flag("heartbeat", "-H", "--heartbeat"),
    flag("with_locale", "-l", "--locale"),
    flag("with_uptime", "-u", "--uptime"),
    flag("with_bundles", "-b", "--bundles"),
    value("bundles_dir", "--bundles-dir", default=BUNDLES_DIR, metavar="DIR"),
    VERSION,
)


def send_hello(
    mode: str | None, config_file: str | None, heartbeat: bool, with_locale: bool, with_uptime: bool,
    with_bundles: bool, bundles_dir: str,
) -> int:
    probe = Probe(NAME, config_file, mode=mode)
    probe.exit_unless_opted_in()
    try:
        bundles = list_bundles(bundles_dir) if with_bundles else None
    except BundlesError as e:
        echo(f"hprobe: {e}", err=True)
        return EXIT_FAILURE
    payload = hello_payload(
        current_locale() if with_locale else None,
        uptime_seconds() if with_uptime else None,
        bundles,
    )
    record = probe.record(CLASS_HEARTBEAT if heartbeat else CLASS_HELLO, SEVERITY, payload, PAYLOAD_VERSION)
    result = probe.send(record)
    if not result.sent:
        echo(f"Failed to send record to daemon: {result.message}", err=True)
        return EXIT_FAILURE
    if result.deferred:
        echo("Record queued by the daemon for later: it is over the rate limit and is "
             "delivered when the limit allows.")
    else:
        echo("Successfully sent record to daemon.")
    return EXIT_OK


@functools.cache
def _command() -> ProbeCommand:
    from .probe_cli import probe_command

    return probe_command(NAME, OPTIONS, send_hello, usage_text=USAGE, help=HELP, epilog=EPILOG,
                         short_help="send the hello-world or heartbeat record")


main = program_main(NAME, OPTIONS, send_hello, _command)
__getattr__ = command_attribute(__name__, _command)


if __name__ == "__main__":
    main()
