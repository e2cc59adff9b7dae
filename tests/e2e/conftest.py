"""The end-to-end suite reuses the integration tests' harnesses (telemprobd_harness,
http_collector); bench/chaos.py puts the same two directories on its path."""

from __future__ import annotations

import sys
from pathlib import Path

_INTEGRATION = str(Path(__file__).resolve().parent.parent / "integration")
if _INTEGRATION not in sys.path:
    sys.path.insert(0, _INTEGRATION)
