"""Before telemctl stops anything: would the daemons start with this configuration?

A restart used to stop both daemons and only then learn, from the second one dying at
start, that the file had a bad value or that `server` was not a URL; records then piled
up with nothing delivering them.  Here the whole file is read and each daemon's own
start-up checks are run on it (telempostd: the collector URL, the TLS files, the id
header; telemprobd: the socket path), so a bad file is refused in one line while the
running daemons go on.  What the file has that is ignored or changed comes back as
warnings.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from telemetry import config as config_mod
from telemetry.errors import TelemetryError
from telemetry.paths import Paths


class NotStartable(TelemetryError):
    """The daemons would refuse this configuration; the message says which setting and why."""


@dataclass(frozen=True)
class Checked:
    config: config_mod.Config
    warnings: tuple[str, ...]


# Each daemon's own checks, by module and function; a daemon that is not installed is
# reported by start itself.
DAEMON_CHECKS = (
    ("telemetry.daemons.postd.endpoint", "check_config"),
    ("telemetry.daemons.probd.listener", "check_config"),
)


def check(paths: Paths, config_file: str | None) -> Checked:
    try:
        cfg = config_mod.load(paths, config_file)
        for module, function in DAEMON_CHECKS:
            try:
                daemon_check = getattr(importlib.import_module(module), function)
            except ModuleNotFoundError:
                continue
            daemon_check(cfg)
    except TelemetryError as e:
        raise NotStartable(str(e)) from None
    warnings = [str(n) for n in cfg.notices]
    if (plain := config_mod.plaintext_warning(cfg)) is not None:
        warnings.append(plain)
    return Checked(cfg, tuple(warnings))
