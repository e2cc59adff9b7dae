"""sd_notify: how both daemons tell systemd READY=1, STATUS=, WATCHDOG=1 and STOPPING=1.

Only a process systemd asked (NOTIFY_SOCKET set, Type=notify) says anything; a failure
to say it (systemd-python missing, the socket gone) never stops a daemon.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def notify(message: str) -> None:
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    try:
        from systemd import daemon as sd

        sd.notify(message)
    except Exception as e:  # noqa: BLE001 - nothing to tell, nobody to tell it to
        log.debug("sd_notify failed: %s", e)
