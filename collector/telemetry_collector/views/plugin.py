"""Plugin views: a page added by another distribution, without touching the collector.

A plugin view is a `PluginView` registered in the ``telemetry_collector.views`` entry-point
group of its distribution::

    [project.entry-points."telemetry_collector.views"]
    mce = "telemetry_collector.plugins.mce:VIEW"

    # my_views/mce.py
    from telemetry_collector.views.plugin import Page, PluginView, ViewData, ViewRequest

    async def render(request: ViewRequest) -> Page:
        counts = await request.read(lambda data: data.tallies("mce", "bank", request.period))
        return Page("mce.html", {"counts": counts})

    VIEW = PluginView(slug="mce", title="MCE", render=render, templates="my_views",
                      description="Machine check exceptions by bank and status")

The collector serves it at ``/telemetryui/<slug>``, lists it in the index and the menu, and
asks for the read credential first (the plugin cannot forget to).  `render` gets a
`ViewRequest`: the query parameters, the period they name (``days``, ``from``, ``to``; the
view's `default_days` otherwise) and `read`, which runs a function on a database
connection off the event loop with a `ViewData`: the counters of record fields and of the
facts payload parsers find (`derive.parsers`), records per classification, and pages of
records.  It returns a `Page`: a template of the plugin's own ``templates`` folder (in the
package named by `templates`), which extends the collector's ``base.html`` and may use its
``macros.html`` (``period_form``, ``chart_table``, ``bars_table``), and the values it shows.
Templates escape every value; charts come from `views.charts` (SVG drawn on the server, no
scripts: the pages' Content-Security-Policy allows none inline).

A view that cannot be loaded is logged and left out; one whose `render` raises answers a
500 page and is logged, and the collector keeps serving.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..credentials import Principal
from ..derive.counts import RECORD_SOURCE, Field
from ..store import Store
from . import reads
from .periods import Period
from .recordfilter import RecordFilter

log = logging.getLogger(__name__)
T = TypeVar("T")

ENTRY_POINT_GROUP = "telemetry_collector.views"
SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


@dataclass(frozen=True)
class Page:
    template: str  # a template in the plugin's own folder
    context: Mapping[str, Any] = field(default_factory=dict)
    title: str | None = None  # the page's title; the view's title otherwise


class ViewData:
    """Reads for a plugin view, on one database connection (inside `ViewRequest.read`)."""

    def __init__(self, store: Store):
        self.store = store

    def tallies(self, source: str, name: str, period: Period) -> list[reads.Count]:
        """Records per value of a counted fact (``source``: the payload parser's name), or of
        a record field (``source`` ``"record"``; ``name`` build, classification or platform),
        over the period, most first."""
        return reads.tallies(self.store, source, name, period)

    def tallies_by_day(self, source: str, name: str, period: Period) -> list[tuple[int, str, int]]:
        """(day, value, records) over the period, by day (days since 1970-01-01, UTC)."""
        return reads.tallies_by_day(self.store, source, name, period)

    def classifications(self, prefix: str, period: Period) -> list[reads.Count]:
        """Records per classification starting with `prefix`, over the period, most first."""
        return [c for c in reads.tallies(self.store, RECORD_SOURCE, Field.CLASSIFICATION, period)
                if c.value.startswith(prefix)]

    def records(self, f: RecordFilter) -> reads.RecordPage:
        """One page of records (without payloads), newest first."""
        return reads.record_page(self.store, f)


Reader = Callable[[Callable[[Store], Any]], Awaitable[Any]]


class ViewRequest:
    def __init__(self, params: Mapping[str, str], period: Period, principal: Principal, reader: Reader):
        self.params = params
        self.period = period
        self.principal = principal
        self._reader = reader

    async def read(self, fn: Callable[[ViewData], T]) -> T:
        result: T = await self._reader(lambda store: fn(ViewData(store)))
        return result


@dataclass(frozen=True)
class PluginView:
    slug: str  # the page is /telemetryui/<slug>
    title: str  # its name in the index and the menu
    render: Callable[[ViewRequest], Awaitable[Page] | Page]
    description: str = ""
    templates: str | None = None  # the package whose "templates" folder holds the view's templates
    default_days: int = 30


class PluginError(Exception):
    pass


def check(view: object, origin: str, reserved: frozenset[str]) -> PluginView:
    if not isinstance(view, PluginView):
        raise PluginError(f"{origin}: not a PluginView but {type(view).__name__}")
    if not SLUG.fullmatch(view.slug) or view.slug in reserved:
        raise PluginError(f"{origin}: slug {view.slug!r} is not usable (a-z, 0-9 and -, not one of "
                          f"{', '.join(sorted(reserved))})")
    if not view.title.strip() or not callable(view.render):
        raise PluginError(f"{origin}: it needs a title and a render function")
    return view


def load_entry_points(reserved: frozenset[str], group: str = ENTRY_POINT_GROUP) -> list[PluginView]:
    views: dict[str, PluginView] = {}
    for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
        origin = f"plugin view {ep.name!r} ({ep.value})"
        try:
            view = check(ep.load(), origin, reserved)
        except Exception as e:  # noqa: BLE001 - a third party's import may fail any way
            log.error("%s is not served: %s", origin, e)
            continue
        if view.slug in views:
            log.error("%s is not served: another view has the slug %r", origin, view.slug)
            continue
        views[view.slug] = view
    return list(views.values())


async def render(view: PluginView, request: ViewRequest) -> Page:
    result = view.render(request)
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, Page):
        raise PluginError(f"plugin view {view.slug!r} returned {type(result).__name__}, not a Page")
    return result
