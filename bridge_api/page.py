"""The status page: `GET /`, its files, and the one JSON document it polls, `GET /admin/overview`.

Everything here opens to `api.admin_keys` only, by bridge_api.admin's own check: HTTP Basic (what
the browser's login prompt sends) or a bearer header. `api.status_page = false` answers 404. The
files ship inside the package, so the page works offline; they are read once, when the app is made.
The page builds its DOM from text nodes only, and its responses forbid inline script and framing.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from importlib import resources

from aiohttp import web

from bot.status import BackendStatus, ModelStatus
from bridge_api.admin import require_admin
from bridge_api.appkeys import BACKEND, CONFIG, METRICS, RECENT
from bridge_api.errors import APIError
from bridge_api.info import token_json
from bridge_api.middleware import PAGE_PATH, Handler

# The page's own files, by name, with their content types: nothing else is served from the folder.
ASSETS = {
    "page.css": "text/css; charset=utf-8",
    "page.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# Only the page's own files and its own origin: no inline script or style, no other origin, no frames.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # What the page shows is live, and about the bridge's keys: no cache keeps a copy.
    "Cache-Control": "no-store",
}


def page_only(handler: Handler) -> Handler:
    """404 while `api.status_page` is false, then the admin check; the page's headers either way."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            if not request.app[CONFIG].now.settings.api.status_page:
                raise APIError(404, "The status page is off (api.status_page = false).", code="unknown_url")
            require_admin(request)
        except APIError as exc:
            exc.headers.update(HEADERS)
            raise
        response = await handler(request)
        response.headers.update(HEADERS)
        return response

    return guarded


class StatusPage:
    """The page's files, held in memory."""

    def __init__(self) -> None:
        folder = resources.files("bridge_api").joinpath("static")
        self.index = folder.joinpath("index.html").read_bytes()
        self.assets = {name: folder.joinpath(name).read_bytes() for name in ASSETS}

    async def serve_index(self, request: web.Request) -> web.StreamResponse:
        """GET /: the page itself."""
        return web.Response(body=self.index, content_type="text/html", charset="utf-8")

    async def serve_asset(self, request: web.Request) -> web.StreamResponse:
        """GET /admin/static/{name}: one of the page's files."""
        name = request.match_info["name"]
        if name not in self.assets:
            raise APIError(404, "The status page has no such file.", code="unknown_url")
        return web.Response(body=self.assets[name], headers={"Content-Type": ASSETS[name]})


async def overview(request: web.Request) -> web.StreamResponse:
    """GET /admin/overview: everything the page shows, in one document."""
    status = request.app[BACKEND].status()
    recent = request.app[RECENT]
    open_streams = request.app[METRICS].registry.get_sample_value("coze_bridge_open_streams")
    return web.json_response(
        {
            "now": _iso(datetime.fromtimestamp(recent.clock(), UTC)),
            "gateway": _gateway(status),
            "instance": {
                "name": status.instance,
                "storage": "ok" if status.storage_available else "unavailable",
                "others": [
                    {"name": other.name, "leader": other.leader}
                    for other in status.instances
                    if other.name != status.instance
                ],
                "leader": any(i.leader for i in status.instances if i.name == status.instance),
            },
            "open_streams": int(open_streams or 0),
            "open_replies": status.open_replies,
            "queue": {
                "length": status.queue.length,
                "limit": status.queue.limit,
                "full_since": _iso(status.queue.full_since),
            },
            "tokens": [token_json(token) for token in status.tokens],
            "models": [_model(model) for model in status.models],
            "requests": recent.requests(),
            "minutes": recent.minutes(),
        }
    )


def _gateway(status: BackendStatus) -> dict[str, object]:
    return {
        "state": status.state.value,
        "since": _iso(status.state_since),
        # Connected, yet Coze's replies arrive blank: the page says which switch to turn on.
        "message_content_missing": status.intent_missing is not None,
    }


def _model(model: ModelStatus) -> dict[str, object]:
    if model.resting_until is not None:
        state = "resting"
    elif model.tokens_available == 0:
        state = "no tokens"
    else:
        state = "ready"
    return {
        "name": model.name,
        "state": state,
        "resting_until": _iso(model.resting_until),
        "tokens_available": model.tokens_available,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


def add_routes(app: web.Application) -> None:
    page = StatusPage()
    app.router.add_get(PAGE_PATH, page_only(page.serve_index))
    app.router.add_get("/admin/static/{name}", page_only(page.serve_asset))
    app.router.add_get("/admin/overview", page_only(overview))
