"""The order the Builds and Population views show builds in (pure).

A build that is a version number (``31890``, ``12.4``, ``6.1.0``) sorts by its numbers,
as numbers (``9`` before ``10``, ``12.4`` before ``12.10``); these come first.  Any other
build (``2024-05-rc1``, ``bookworm``) follows in the order it first appeared, which is the
order its releases were installed.  The reference showed integer builds only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TypeVar

VERSION = re.compile(r"\d{1,30}(?:\.\d{1,30}){0,15}")

T = TypeVar("T")


def version_key(build: str) -> tuple[int, ...] | None:
    if not VERSION.fullmatch(build):
        return None
    return tuple(int(part) for part in build.split("."))


def sort_key(build: str, first_seen: int) -> tuple:
    """Versions by their numbers (the text breaks ties: ``1.0`` and ``1.00``), then the
    rest by first appearance (the text breaks ties)."""
    version = version_key(build)
    if version is not None:
        return (0, version, build)
    return (1, (), first_seen, build)


def order(rows: Iterable[T], build: str = "build", first_seen: str = "first_seen") -> list[T]:
    """`rows` (objects with the two attributes named) in the builds' order."""
    return sorted(rows, key=lambda r: sort_key(getattr(r, build), getattr(r, first_seen)))
