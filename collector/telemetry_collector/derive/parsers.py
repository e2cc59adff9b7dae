"""Payload parsers: what a classification's payloads say, worked out once at ingestion.

A parser is any object with::

    name: str                          # short, [a-z0-9_-]; its facts are counted under it
    classifications: tuple[str, ...]   # the records it reads: exact, or ending in "*"
    def parse(self, record: NewRecord) -> Iterable[Fact | Stack]: ...

registered in the ``telemetry_collector.payload_parsers`` entry-point group of its
distribution (the object itself, or a class or function that returns one)::

    [project.entry-points."telemetry_collector.payload_parsers"]
    mce = "telemetry_collector.plugins.mce:PARSER"

`parse` runs in the collector's writer, inside the transaction that stores the record, for
every new record of those classifications: it must be quick and must not do I/O.  It
returns facts, each counted per day (``name=value``; a view reads the counts with
`views.plugin.ViewData.tallies`), and stacks, which the Crashes and Kernel views group by
their guilty frame.  The built-in crash and kernel groupings are parsers like any other
(`crashes.PARSER`, `oopses.PARSER`).  A parser that raises is logged and counted
(``parser_errors`` by name in /api/stats) and the record is stored all the same.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..model import NewRecord
from .stacks import Stack, clip

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "telemetry_collector.payload_parsers"
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
FACT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
FACT_VALUE_MAX = 200
FACTS_PER_RECORD = 32


@dataclass(frozen=True)
class Fact:
    """Something a payload says, counted per day: ``Fact("status", "0x8c00004000010090")``."""

    name: str
    value: str


class PayloadParser(Protocol):
    name: str
    classifications: tuple[str, ...]

    def parse(self, record: NewRecord) -> Iterable[Fact | Stack]: ...


class ParserError(Exception):
    pass


def matches(patterns: Sequence[str], classification: str) -> bool:
    for p in patterns:
        if p.endswith("*"):
            if classification.startswith(p[:-1]):
                return True
        elif p == classification:
            return True
    return False


def check(parser: object, origin: str) -> PayloadParser:
    """`parser` as a usable parser, or `ParserError` saying what it lacks."""
    name = getattr(parser, "name", None)
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ParserError(f"{origin}: its name must be 1 to 32 of a-z, 0-9, _ and -, not {name!r}")
    patterns = getattr(parser, "classifications", None)
    if (not isinstance(patterns, tuple | list) or not patterns
            or not all(isinstance(p, str) and p for p in patterns)):
        raise ParserError(f"{origin}: classifications must be a non-empty tuple of strings")
    if not callable(getattr(parser, "parse", None)):
        raise ParserError(f"{origin}: it has no parse(record) method")
    return parser  # type: ignore[return-value]


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> list[PayloadParser]:
    """Every installed parser, by entry-point name; one that cannot be loaded is logged and
    left out (the collector serves without it)."""
    parsers: dict[str, PayloadParser] = {}
    for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
        origin = f"payload parser {ep.name!r} ({ep.value})"
        try:
            obj = ep.load()
            if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "parse")):
                obj = obj()
            parser = check(obj, origin)
        except Exception as e:  # noqa: BLE001 - a third party's import may fail any way
            log.error("%s is not used: %s", origin, e)
            continue
        if parser.name in parsers:
            log.error("%s is not used: another parser is named %r", origin, parser.name)
            continue
        parsers[parser.name] = parser
    return list(parsers.values())


def fact_ok(fact: Fact) -> Fact | None:
    """A fact fit to count (name checked, value cut to one printable line), or None."""
    if not isinstance(fact.name, str) or not FACT_NAME.fullmatch(fact.name):
        return None
    return Fact(fact.name, clip(str(fact.value), FACT_VALUE_MAX))
