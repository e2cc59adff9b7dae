"""The collector's web views: server-rendered pages under ``/telemetryui`` (``GET /``
redirects there, as the reference backend does).

Records, Builds, Stats, Crashes, Kernel and Population, and the plugin views of the
``telemetry_collector.views`` entry-point group (`plugin`).  Every page needs the read
credential (`auth.requires`); a browser is asked for it with HTTP Basic (any user name,
the token as password).  Pages are Jinja2 templates; charts are SVG drawn on the server
(`charts`), each beside a table of its numbers; the stylesheet is served from the package
(``/telemetryui/static``), so the pages work without any network beyond the collector.

Pure parts: `periods`, `recordfilter`, `buildorder`, `charts`, `safetext`.  I/O: `reads`
(statements over the counters kept at ingestion), `pages` (routes), `site` (templates and
headers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..auth import Endpoint, requires
from ..credentials import Scope
from ..derive.stacks import Domain
from . import pages, plugin
from .site import PREFIX, RESERVED, STATIC, Site

if TYPE_CHECKING:
    from ..app import CollectorApp


def install(app: CollectorApp, plugins: list[plugin.PluginView] | None = None) -> Site:
    """Add the views' routes to the application; `plugins` defaults to the installed ones."""
    views = plugin.load_entry_points(RESERVED) if plugins is None else plugins
    site = Site(views)
    app.starlette.state.site = site

    def error(status: int, message: str, headers: dict[str, str]) -> Response:
        return site.error(None, status, message, headers)

    def read(endpoint: Endpoint) -> Endpoint:
        return requires(Scope.READ, error=error)(endpoint)

    def admin(endpoint: Endpoint) -> Endpoint:
        return requires(Scope.ADMIN, error=error)(endpoint)

    async def to_index(request: Request) -> Response:
        return RedirectResponse(PREFIX, status_code=308)

    routes: list[BaseRoute] = [
        Route(PREFIX, read(pages.index), methods=["GET"]),
        Route(PREFIX + "/", to_index, methods=["GET"]),
        Route(PREFIX + "/records", read(pages.records), methods=["GET"]),
        Route(PREFIX + "/records/{record_id}", read(pages.record), methods=["GET"]),
        Route(PREFIX + "/builds", read(pages.builds), methods=["GET"]),
        Route(PREFIX + "/stats", read(pages.stats), methods=["GET"]),
        Route(PREFIX + "/population", read(pages.population), methods=["GET"]),
        Route(PREFIX + "/crashes", read(pages.crash_view(Domain.CRASH)), methods=["GET"]),
        Route(PREFIX + "/crashes/never-guilty", admin(pages.edit_never_guilty(Domain.CRASH)), methods=["POST"]),
        Route(PREFIX + "/kernel", read(pages.crash_view(Domain.KERNEL)), methods=["GET"]),
        Route(PREFIX + "/kernel/never-guilty", admin(pages.edit_never_guilty(Domain.KERNEL)), methods=["POST"]),
        Mount(STATIC, app=StaticFiles(packages=[("telemetry_collector.views", "static")]), name="static"),
        *(Route(f"{PREFIX}/{v.slug}", read(pages.plugin_page(v)), methods=["GET"]) for v in views),
    ]
    app.add_routes(routes)
    return site
