"""Building the aiohttp application."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from bot.interface import Backend, open_discord_backend
from bot.proxy import ProxyUrl, configured
from bridge_api import admin, conversations_api, page
from bridge_api.alerts import alerts_ctx
from bridge_api.appkeys import BACKEND, CONFIG, HTTP_CLIENT, IMAGES, METRICS, RECENT
from bridge_api.chat import chat_completions
from bridge_api.deadlines import GuardedSite
from bridge_api.image_cache import image_cache_ctx, serve_image
from bridge_api.imagegen import image_generations
from bridge_api.info import get_model, healthz, list_models, metrics_endpoint, readyz, status
from bridge_api.live import LiveConfig, Load
from bridge_api.metrics import Metrics
from bridge_api.middleware import add_common_headers, bridge_middleware
from bridge_api.outbound import Outbound, is_refused
from bridge_api.recent import Recent
from bridge_api.settings import ApiSettings, Settings

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0


def make_app(
    settings: Settings, port: int, *, backend: Backend | None = None, reload: Load | None = None
) -> web.Application:
    """The bridge's HTTP app. Without `backend`, it connects to Discord on startup; `reload`
    reads the settings again (SIGHUP, POST /admin/reload)."""
    app = web.Application(client_max_size=settings.api.max_body_bytes, middlewares=[bridge_middleware])
    app[CONFIG] = LiveConfig(settings, reload)
    app[METRICS] = Metrics()
    app[RECENT] = Recent()
    app.on_response_prepare.append(add_common_headers)
    app.cleanup_ctx.append(_http_client)
    app.cleanup_ctx.append(image_cache_ctx)  # fetches with the client; the backend keeps with it
    app.cleanup_ctx.append(_backend_context(settings, port, backend))
    app.cleanup_ctx.append(alerts_ctx)
    app.on_shutdown.append(_end_open_streams)
    # Some providers' clients call the routes without the /v1 prefix.
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/images/generations", image_generations)
        app.router.add_get(f"{prefix}/status", status)
        app.router.add_get(f"{prefix}/models", list_models)
        app.router.add_get(f"{prefix}/models/{{model_id}}", get_model)
    # Kept images: the name is checked against the cache's own, so no path reaches beyond it.
    app.router.add_get("/images/{name}", serve_image)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    admin.add_routes(app)
    conversations_api.add_routes(app)
    page.add_routes(app)
    return app


async def _end_open_streams(app: web.Application) -> None:
    # on_shutdown runs after the listening sockets closed and before aiohttp waits for the
    # handlers: open streams end now with an in-band server_shutdown error and [DONE].
    app[BACKEND].begin_shutdown()


def _backend_context(
    settings: Settings, port: int, given: Backend | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        if given is not None:
            app[BACKEND] = given
            yield
            return
        # Without api.public_url, Discord's image links are passed on as they come.
        images = app[IMAGES] if settings.api.public_url else None
        async with open_discord_backend(settings, images=images) as backend:
            app[BACKEND] = backend
            log.info("bridge API on port %d, Discord at %s", port, settings.discord.api_base)
            yield

    return context


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    # The one client for URLs callers (and Coze's replies) name: guarded against the bridge's own network.
    settings = app[CONFIG].now.settings
    refused = None if settings.images.allow_private_networks else is_refused
    async with Outbound(refused=refused, proxy=await _image_proxy(settings)) as client:
        app[HTTP_CLIENT] = client
        yield


async def _image_proxy(settings: Settings) -> ProxyUrl | None:
    # images.proxy: None follows discord.proxy; "" fetches directly.
    return await configured(
        settings.discord.proxy if settings.images.proxy is None else settings.images.proxy
    )


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[web.AppRunner, int]]:
    """The one way to serve an app (CLI, tests, benchmarks): on host:port for the block; yields
    the runner and the port bound (0: a free one)."""
    api = app[CONFIG].now.settings.api if CONFIG in app else ApiSettings()  # (tests serve plain apps too)
    # handler_cancellation: when a client goes away mid-stream, aiohttp cancels the handler,
    # which closes the backend iterator and releases the request's waiter at once.
    # shutdown_timeout bounds the wait for handlers, so SIGTERM exits well within 10 s.
    # keepalive_timeout also ends a kept-alive connection still waiting for the next request's
    # headers: the header deadline after the first request.
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=SHUTDOWN_GRACE,
        keepalive_timeout=api.header_timeout_seconds,
    )
    await runner.setup()
    try:
        await GuardedSite(runner, host, port, header_seconds=api.header_timeout_seconds).start()
        yield runner, runner.addresses[0][1]
    finally:
        await runner.cleanup()
