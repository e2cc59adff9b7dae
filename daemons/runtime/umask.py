"""The daemons' file mode mask: records are private.

The queue, the journal and the state files beside them hold any local user's records and
the collector's answers; they are for the daemons' account and its group (telemctl status,
metrics), never for other users.  A daemon started by hand inherits whatever umask its
shell had (022 makes queue.db 0644), so each daemon adds this mask to the inherited one
at start; a unit's stricter UMask= stays.
"""

from __future__ import annotations

import os

PRIVATE_UMASK = 0o027


def make_files_private() -> int:
    """Add PRIVATE_UMASK to the process's umask; returns the umask now in force."""
    mask = os.umask(0) | PRIVATE_UMASK
    os.umask(mask)
    return mask
