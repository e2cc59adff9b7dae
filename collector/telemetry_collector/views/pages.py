"""The views' routes: each reads through the application's reader connection, off the event
loop, and renders a template.  Reading needs the read credential; changing a never-guilty
list needs the admin scope and a request from the collector's own pages (its Origin, or
Sec-Fetch-Site, names this site), so another site cannot make a signed-in browser post one.
"""

from __future__ import annotations

import enum
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response

from ..derive import tables
from ..derive.counts import RECORD_SOURCE, Field
from ..derive.guilty import NeverGuilty, NeverGuiltyError
from ..derive.stacks import Domain
from ..store import Store, StoreError
from . import plugin, reads
from .charts import Point
from .periods import Period, PeriodError, date_text, parse_period
from .recordfilter import FilterError, RecordFilter, parse_record_filter, to_params
from .site import PREFIX, Site

if TYPE_CHECKING:
    from ..app import CollectorApp

log = logging.getLogger(__name__)
T = TypeVar("T")

TOP_DEFAULT = 10
TOP_MAX = 100
STATS_BARS = 15  # bars per chart; the rest is one "others" bar
FORM_MAX = 256 * 1024
DOMAIN_TEXT = {
    Domain.CRASH: {"title": "Crashes", "slug": "crashes", "what": "crash reports",
                   "classes": "crashprobe's records (org.clearlinux/crash/*)"},
    Domain.KERNEL: {"title": "Kernel", "slug": "kernel", "what": "kernel oopses, warnings and BUGs",
                    "classes": "klogscanner's and pstoreprobe's records (org.clearlinux/kernel/*)"},
}


def _site(request: Request) -> Site:
    return request.app.state.site


def _app(request: Request) -> CollectorApp:
    return request.app.state.collector


def params_of(request: Request) -> dict[str, str]:
    """The first value of each query parameter, as the API reads them."""
    out: dict[str, str] = {}
    for k, v in urllib.parse.parse_qsl(request.url.query, keep_blank_values=True, max_num_fields=64):
        out.setdefault(k, v)
    return out


async def _read(request: Request, fn: Callable[[Store], T]) -> T:
    return await _app(request).reader(fn)


def _failed(request: Request, what: str, error: Exception) -> Response:
    log.error("%s failed: %s", what, error)
    return _site(request).error(request, 500, f"The {what} could not be read (database error); try again later.")


def _period(request: Request, params: dict[str, str], default_days: int) -> Period | Response:
    try:
        return parse_period(params, int(time.time()), default_days)
    except PeriodError as e:
        return _site(request).error(request, 400, f"Period: {e}")


# --- index, records ------------------------------------------------------------------------

async def index(request: Request) -> Response:
    return _site(request).render(request, "index.html", {"title": "Views", "views": _site(request).menu()})


async def records(request: Request) -> Response:
    params = params_of(request)
    site = _site(request)
    try:
        f = parse_record_filter(params)
    except FilterError as e:
        return site.render(request, "records.html", {"title": "Records", "error": str(e), "filter": RecordFilter(),
                                                    "form": params, "page": None, "classes": [], "builds": []},
                           status=400)
    recent = Period(int(time.time()) // 86400 - 29, int(time.time()) // 86400)

    def read(store: Store) -> tuple[reads.RecordPage, list[str], list[str]]:
        return (reads.record_page(store, f), reads.known_values(store, Field.CLASSIFICATION, recent),
                reads.known_values(store, Field.BUILD, recent))

    try:
        page, classes, builds = await _read(request, read)
    except StoreError as e:
        return _failed(request, "records", e)
    base = to_params(f.page())
    return site.render(request, "records.html", {
        "title": "Records", "error": None, "filter": f, "form": params, "page": page, "classes": classes,
        "builds": builds, "base": base,
    })


async def record(request: Request) -> Response:
    text = request.path_params["record_id"]
    site = _site(request)
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return site.error(request, 400, "A record id is a number.")
    try:
        found = await _read(request, lambda store: reads.one_record(store, int(text)))
    except StoreError as e:
        return _failed(request, "record", e)
    if found is None:
        return site.error(request, 404, f"There is no record {int(text)} (it may have been purged).")
    return site.render(request, "record.html", {"title": f"Record {found.id}", "stored": found, "r": found.record})


# --- counters ------------------------------------------------------------------------------

async def builds(request: Request) -> Response:
    params = params_of(request)
    period = _period(request, params, 30)
    if isinstance(period, Response):
        return period
    try:
        counts = await _read(request, lambda store: reads.builds(store, period))
    except StoreError as e:
        return _failed(request, "builds", e)
    return _site(request).render(request, "builds.html", {
        "title": "Builds", "period": period, "params": params, "counts": counts,
        "points": [Point(c.value, c.records) for c in counts], "total": sum(c.records for c in counts),
    })


def _with_others(counts: list[reads.Count], most: int) -> list[Point]:
    points = [Point(c.value, c.records) for c in counts[:most]]
    rest = sum(c.records for c in counts[most:])
    if rest:
        points.append(Point(f"{len(counts) - most} others", rest))
    return points


async def stats(request: Request) -> Response:
    params = params_of(request)
    period = _period(request, params, 30)
    if isinstance(period, Response):
        return period

    def read(store: Store) -> tuple[list[reads.Count], list[reads.Count]]:
        return (reads.tallies(store, RECORD_SOURCE, Field.CLASSIFICATION, period),
                reads.tallies(store, RECORD_SOURCE, Field.PLATFORM, period))

    try:
        classes, platforms = await _read(request, read)
    except StoreError as e:
        return _failed(request, "stats", e)
    total = sum(c.records for c in classes)
    return _site(request).render(request, "stats.html", {
        "title": "Stats", "period": period, "params": params, "total": total, "charts": [
            {"id": "classifications", "title": "Records per classification", "header": "Classification",
             "counts": classes, "points": _with_others(classes, STATS_BARS),
             "link": f"{PREFIX}/records?classification="},
            {"id": "platforms", "title": "Records per platform (sys_vendor|product_name|product_version)",
             "header": "Platform", "counts": platforms, "points": _with_others(platforms, STATS_BARS), "link": None},
        ],
    })


async def population(request: Request) -> Response:
    params = params_of(request)
    period = _period(request, params, 7)
    if isinstance(period, Response):
        return period
    try:
        rows = await _read(request, lambda store: reads.population(store, period))
    except StoreError as e:
        return _failed(request, "population", e)
    return _site(request).render(request, "population.html", {
        "title": "Population", "period": period, "params": params, "rows": rows,
        "points": [Point(r.build, r.machines) for r in rows],
    })


# --- crash groups ----------------------------------------------------------------------------

def _top(params: dict[str, str]) -> int:
    text = params.get("top", "")
    if text.isascii() and text.isdigit() and 1 <= int(text[:4]) <= TOP_MAX:
        return int(text)
    return TOP_DEFAULT


def crash_view(domain: Domain) -> Callable[[Request], Awaitable[Response]]:
    async def view(request: Request) -> Response:
        return await _crash_page(request, domain, params_of(request))

    return view


def _crash_context(domain: Domain, params: dict[str, str], period: Period, summary: reads.CrashSummary,
                   never: NeverGuilty, default: bool, top: int, error: str | None = None,
                   entries: str | None = None) -> dict[str, Any]:
    text = DOMAIN_TEXT[domain]
    return {
        "title": text["title"], "text": text, "domain": domain.value, "period": period, "params": params,
        "summary": summary, "never": never.texts(), "default": default, "top": top, "error": error,
        "entries": entries if entries is not None else "\n".join(never.texts()),
        "saved": params.get("saved"), "range_from": date_text(period.first_day),
        "range_to": date_text(period.last_day),
    }


def same_origin(request: Request) -> bool:
    """A form posted from this site's own pages (a browser says where it comes from; a
    client that is not a browser says nothing and is let through on its credential)."""
    origin = request.headers.get("origin")
    if origin is not None:
        try:
            host = urllib.parse.urlsplit("//" + request.headers.get("host", "")).hostname
            return origin != "null" and host is not None and urllib.parse.urlsplit(origin).hostname == host
        except ValueError:  # a malformed Host or Origin
            return False
    site = request.headers.get("sec-fetch-site")
    return site is None or site in ("same-origin", "none")


async def _form(request: Request) -> dict[str, str] | None:
    """The url-encoded form, first value of each field; None if it is too large."""
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > FORM_MAX:
                return None
            chunks.append(chunk)
    except ClientDisconnect:
        return None
    out: dict[str, str] = {}
    body = b"".join(chunks).decode("utf-8", "replace")
    for k, v in urllib.parse.parse_qsl(body, keep_blank_values=True, max_num_fields=64):
        out.setdefault(k, v)
    return out


class FormRefusal(enum.Enum):
    """The value names the counter (``refused.<value>`` in /api/stats)."""

    CROSS_SITE = "cross_site_form"
    TOO_LARGE = "form_too_large"


def _refused(request: Request, reason: FormRefusal, status: int, message: str) -> Response:
    client = request.client.host if request.client else "?"
    _app(request).refuse(reason, client, f"POST {request.url.path[:100]}: {message}")
    return _site(request).error(request, status, message)


def edit_never_guilty(domain: Domain) -> Callable[[Request], Awaitable[Response]]:
    async def edit(request: Request) -> Response:
        site = _site(request)
        if not same_origin(request):
            return _refused(request, FormRefusal.CROSS_SITE, 403,
                            "This form can only be sent from the collector's own pages.")
        form = await _form(request)
        if form is None:
            return _refused(request, FormRefusal.TOO_LARGE, 413, f"The form is larger than {FORM_MAX // 1024} KiB.")
        params = params_of(request)
        action = form.get("action", "save")
        try:
            if action == "reset":
                new: NeverGuilty | None = None
            elif action == "add":
                current = await _read(request, lambda store: reads.never_guilty_list(store, domain)[0])
                new = NeverGuilty.parse("\n".join([*current.texts(), form.get("entry", "")]))
            else:
                new = NeverGuilty.parse(form.get("entries", ""))
        except NeverGuiltyError as e:
            return await _rejected(request, domain, params, str(e), form.get("entries", ""))
        except StoreError as e:
            return _failed(request, "never-guilty list", e)
        try:
            changed = await _app(request).writer.call(lambda store: tables.replace_never_guilty(store, domain, new))
        except StoreError as e:
            log.error("changing the never-guilty list failed: %s", e)
            return site.error(request, 500, "The list could not be saved (database error); try again later.")
        log.info("never-guilty list (%s) %s by %s: %d stacks changed group", domain.value,
                 "reset" if new is None else "saved", request.state.principal.name, changed)
        back = {k: v for k, v in params.items() if k in ("days", "from", "to", "top")}
        location = f"{PREFIX}/{DOMAIN_TEXT[domain]['slug']}" + _query({**back, "saved": str(changed)})
        return RedirectResponse(location, status_code=303)

    return edit


def _query(params: dict[str, str]) -> str:
    return "?" + urllib.parse.urlencode(params) if params else ""


async def _rejected(request: Request, domain: Domain, params: dict[str, str], message: str,
                    entries: str) -> Response:
    return await _crash_page(request, domain, params, error=message, entries=entries)


async def _crash_page(request: Request, domain: Domain, params: dict[str, str], *,
                      error: str | None = None, entries: str | None = None) -> Response:
    """The crash groups page; with `error`, the list of never-guilty frames as it was
    posted (`entries`) comes back beside the message, answered 400."""
    period = _period(request, params, 7)
    if isinstance(period, Response):
        return period
    top = _top(params)

    def read(store: Store) -> tuple[reads.CrashSummary, NeverGuilty, bool]:
        summary = reads.crash_groups(store, domain, period, top)
        never, default = reads.never_guilty_list(store, domain)
        return summary, never, default

    try:
        summary, never, default = await _read(request, read)
    except StoreError as e:
        return _failed(request, DOMAIN_TEXT[domain]["what"], e)
    context = _crash_context(domain, params, period, summary, never, default, top, error=error, entries=entries)
    return _site(request).render(request, "crashes.html", context, status=400 if error is not None else 200)


# --- plugin views ------------------------------------------------------------------------------

def plugin_page(view: plugin.PluginView) -> Callable[[Request], Awaitable[Response]]:
    async def page(request: Request) -> Response:
        params = params_of(request)
        period = _period(request, params, view.default_days)
        if isinstance(period, Response):
            return period
        site = _site(request)
        try:
            result = await plugin.render(view, plugin.ViewRequest(params, period, request.state.principal,
                                                                  _app(request).reader))
        except StoreError as e:
            return _failed(request, view.title, e)
        except Exception as e:  # noqa: BLE001 - a plugin's bug answers 500, the collector keeps serving
            log.exception("plugin view %r failed", view.slug)
            return site.error(request, 500, f"The {view.title} view failed: {type(e).__name__}")
        context = {"title": result.title or view.title, "period": period, "params": params, "view": view,
                   **result.context}
        return site.render(request, f"{view.slug}/{result.template}", context)

    return page
