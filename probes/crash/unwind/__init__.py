"""Stack unwinding from a core's registers: CFI first, frame pointers as the fallback."""

from .arch import Arch, for_machine, machine_name
from .unwinder import MAX_FRAMES, FrameSource, RawFrame, StopReason, Target, Unwound, unwind

__all__ = [
    "MAX_FRAMES",
    "Arch",
    "FrameSource",
    "RawFrame",
    "StopReason",
    "Target",
    "Unwound",
    "for_machine",
    "machine_name",
    "unwind",
]
