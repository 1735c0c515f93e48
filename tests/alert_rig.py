"""A rig for the alerts' tests: a webhook receiver on loopback, a clock moved by hand, a mock
backend whose whole status the test sets, and an app holding the alerts' context."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from bot.interface import Finished, PromptRequest, ReplyEvent
from bot.mock import MockBackend
from bot.status import BackendStatus, ModelStatus, TokenReport, TokenState
from bridge_api.alerts import ALERTS, AlertWatcher, alerts_context
from bridge_api.appkeys import BACKEND, CONFIG
from bridge_api.live import LiveConfig
from bridge_api.settings import Settings, load_settings

DISCORD = {"bot_token": "b", "guild_id": 1, "coze_bot_id": 2, "channel_id": 3}
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SECRET = "hook-secret-7f3a"  # in every webhook URL: never in a log line


@dataclass
class Post:
    path: str
    body: dict[str, Any]


@dataclass
class Receiver:
    """An HTTP server on loopback that records what it is sent."""

    base: str
    posts: list[Post] = field(default_factory=list)
    arrived: asyncio.Queue[Post] = field(default_factory=asyncio.Queue)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    async def handle(self, request: web.Request) -> web.Response:
        post = Post(request.path, await request.json())
        self.posts.append(post)
        self.arrived.put_nowait(post)
        if request.path.startswith("/slow"):
            await self.release.wait()
        if request.path.startswith("/broken"):
            return web.Response(status=500)
        return web.Response(status=204)

    def take(self) -> list[Post]:
        posts, self.posts[:] = list(self.posts), []
        while not self.arrived.empty():
            self.arrived.get_nowait()
        return posts


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    """A `Receiver` on 127.0.0.1 and a free port for the block."""
    app = web.Application()
    runner = web.AppRunner(app, access_log=None)  # its own log would name the secret path
    receiver = Receiver("")
    app.router.add_post("/{tail:.*}", receiver.handle)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield receiver
    finally:
        receiver.release.set()
        await runner.cleanup()


class Clock:
    def __init__(self) -> None:
        self.seconds = 1000.0

    def monotonic(self) -> float:
        return self.seconds

    def now(self) -> datetime:
        return START + timedelta(seconds=self.seconds - 1000.0)

    def advance(self, seconds: float) -> None:
        self.seconds += seconds


async def _no_replies(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
    yield Finished("stop", "")


class StatusMock(MockBackend):
    """The mock, with the models' statuses and `state_since` the tests set (and a status count)."""

    def __init__(self) -> None:
        super().__init__(_no_replies)
        self.model_statuses = [ModelStatus("coze", None, tokens_available=1)]
        self.state_since: datetime | None = None
        self.status_calls = 0

    def status(self) -> BackendStatus:
        self.status_calls += 1
        return replace(super().status(), models=tuple(self.model_statuses), state_since=self.state_since)


def token(number: int, state: TokenState = TokenState.HEALTHY, **fields: Any) -> TokenReport:
    report = TokenReport(
        id=hashlib.sha256(str(number).encode()).hexdigest()[:16],
        label=f"user token #{number}",
        state=state,
        since=None,
        reason=None,
        resting_until=None,
        resting_models={},
        in_flight=0,
        max_in_flight=2,
        posts_today=0,
        daily_cap=None,
    )
    return replace(report, **fields)


def settings(receiver: Receiver, url: str | None, **alerts: Any) -> Settings:
    section = {"min_interval_minutes": 1, "timeout_seconds": 5} | alerts
    if url is not None:
        section["webhook_url"] = url
    return load_settings(environ={}, discord=DISCORD | {"api_base": receiver.url("/api/v10")}, alerts=section)


@dataclass
class Rig:
    backend: StatusMock
    live: LiveConfig
    clock: Clock
    watcher: AlertWatcher
    # What the next reload reads (as SIGHUP reads the file again).
    loaded: list[Settings] = field(default_factory=list)

    def reload(self, config: Settings) -> None:
        self.loaded.append(config)
        self.live.reload(self.backend)

    async def step(self, seconds: float = 0.0) -> None:
        """Move the clock, look once, and let the deliveries that started finish."""
        self.clock.advance(seconds)
        self.watcher.tick()
        await self.watcher.deliveries.wait()


@contextlib.asynccontextmanager
async def running(
    config: Settings,
    backend: StatusMock | None = None,
    *,
    interval: float | None = None,
    context: Callable[[web.Application], AsyncIterator[None]] | None = None,
) -> AsyncIterator[Rig]:
    """An app with the alerts' context (ticked by hand unless `interval` or `context` says)."""
    loaded = [config]
    app = web.Application()
    app[CONFIG] = LiveConfig(config, lambda: loaded[-1])
    mock = backend if backend is not None else StatusMock()
    app[BACKEND] = mock
    clock = Clock()
    app.cleanup_ctx.append(context or alerts_context(interval=interval, clock=None if interval else clock))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        yield Rig(mock, app[CONFIG], clock, app[ALERTS], loaded)
    finally:
        await runner.cleanup()


def by_kind(posts: list[Post]) -> dict[str, dict[str, Any]]:
    found = {post.body["kind"]: post.body for post in posts}
    assert len(found) == len(posts), "one message per kind"
    return found
