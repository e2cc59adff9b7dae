"""This boot's id, the kernel's random UUID for the running boot.

The daemons stamp it into journal entries (telemctl journal -b) and into telemprobd's
saved rate-limit state, where it tells "same boot: trust the monotonic clock" from "the
machine rebooted: use the wall clock"; klogscanner and the journal probe compare it with
journald's `_BOOT_ID`, which is the same UUID written without its dashes.
"""

from __future__ import annotations

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
BOOT_ID_LEN = 36  # 8-4-4-4-12 hex digits and dashes


def read_boot_id(path: str = BOOT_ID_PATH, *, dashes: bool = True) -> str:
    """The boot id as the kernel prints it, or as journald does (`dashes=False`: 32 hex
    digits); "" when it cannot be read (not Linux, /proc not mounted)."""
    try:
        with open(path, "rb") as f:
            text = f.read(BOOT_ID_LEN).decode("ascii", errors="replace").strip()
    except OSError:
        return ""
    return text if dashes else text.replace("-", "")
