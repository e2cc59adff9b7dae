"""The pages' frame: templates, menu, time formats, and the headers every page carries.

Pages are Jinja2 templates (autoescaped) in this package's ``templates`` folder; a plugin
view's templates are found under its slug (``mce/mce.html``).  Every page is sent with a
Content-Security-Policy that allows only this site's own stylesheet and images (no script
at all, nothing inline), so even a value that escaped its escaping could not run; pages
are not cached and cannot be framed.
"""

from __future__ import annotations

import datetime
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ..credentials import Scope
from . import charts, safetext
from .periods import CHOICES, date_text
from .plugin import PluginView

PREFIX = "/telemetryui"
STATIC = PREFIX + "/static"
SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}


@dataclass(frozen=True)
class MenuItem:
    slug: str
    title: str
    description: str

    @property
    def path(self) -> str:
        return f"{PREFIX}/{self.slug}"


CORE_VIEWS = (
    MenuItem("records", "Records", "Every stored record, newest first, with filters and each record's payload."),
    MenuItem("builds", "Builds", "Records per OS build."),
    MenuItem("stats", "Stats", "Records per classification and per platform."),
    MenuItem("crashes", "Crashes", "Crash reports grouped by their guilty frame; the never-guilty list."),
    MenuItem("kernel", "Kernel", "Kernel oopses, warnings and BUGs grouped by their first meaningful function."),
    MenuItem("population", "Population", "Distinct machines per build over a period."),
)
RESERVED = frozenset({item.slug for item in CORE_VIEWS} | {"static", "api", "index"})


def utc(ts: int | None) -> str:
    if ts is None:
        return ""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def number(n: int | float) -> str:
    return f"{n:,}"


def short_machine(machine_id: str) -> str:
    return machine_id if len(machine_id) <= 12 else machine_id[:8] + "…"


class Site:
    def __init__(self, plugins: Sequence[PluginView] = ()):
        self.plugins = {p.slug: p for p in plugins}
        loaders: list[jinja2.BaseLoader] = [jinja2.PackageLoader("telemetry_collector.views", "templates")]
        prefixed = {p.slug: jinja2.PackageLoader(p.templates, "templates") for p in plugins if p.templates}
        if prefixed:
            loaders.append(jinja2.PrefixLoader(prefixed))
        self.env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), autoescape=True,
                                      undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(utc=utc, number=number, visible=safetext.visible, short_machine=short_machine,
                                day=date_text)
        self.env.globals.update(
            column_chart=charts.column_chart, bar_chart=charts.bar_chart, Point=charts.Point, PREFIX=PREFIX,
            STATIC=STATIC, PERIOD_CHOICES=CHOICES, menu=self.menu, query=query, points=points,
        )

    def menu(self) -> list[MenuItem]:
        return [*CORE_VIEWS, *(MenuItem(p.slug, p.title, p.description) for p in self.plugins.values())]

    def render(self, request: Request | None, template: str, context: Mapping[str, Any], *,
               status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        principal = getattr(request.state, "principal", None) if request is not None else None
        values = {"principal": principal, "is_admin": principal is not None and principal.scope is Scope.ADMIN,
                  "path": request.url.path if request is not None else "", **context}
        body = self.env.get_template(template).render(values)
        return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})

    def error(self, request: Request | None, status: int, message: str,
              headers: Mapping[str, str] | None = None) -> Response:
        return self.render(request, "error.html", {"status": status, "message": message, "title": "Error"},
                           status=status, headers=headers)


def points(counts: Sequence[Any]) -> list[charts.Point]:
    """Chart points of counts (anything with `value` and `records`)."""
    return [charts.Point(c.value, c.records) for c in counts]


def query(params: Mapping[str, object], **changes: object) -> str:
    """``?a=1&b=2`` of `params` with `changes` (None removes a parameter); "" if empty."""
    merged = {k: v for k, v in {**params, **changes}.items() if v is not None and v != ""}
    return "?" + urllib.parse.urlencode({k: str(v) for k, v in merged.items()}) if merged else ""
