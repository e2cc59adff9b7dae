"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from http_collector import Collector


@pytest.fixture
def collector() -> Iterator[Collector]:
    """The test collector (http_collector.py) on 127.0.0.1, answering 201; stopped afterwards."""
    with Collector() as c:
        yield c
