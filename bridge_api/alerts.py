"""Alerts to `alerts.webhook_url`: a watcher reads the backend's status every second and sends
what `bridge_api.alert_rules` calls for, each message in the background.

The settings are read on every tick, so a reload that changes the URL or the interval applies at
once. A delivery has `alerts.timeout_seconds`, is never retried, and a failed one is logged
without the URL (a Discord webhook's URL holds its token).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from yarl import URL

from bot.interface import Backend
from bot.proxy import configured, connector
from bot.tasks import TaskSet
from bridge_api.alert_rules import Alert, Alerter
from bridge_api.appkeys import BACKEND, CONFIG
from bridge_api.live import LiveConfig

log = logging.getLogger(__name__)

DISCORD_HOSTS = frozenset(
    f"{prefix}{domain}" for prefix in ("", "canary.", "ptb.") for domain in ("discord.com", "discordapp.com")
)
_WEBHOOK_PATH = re.compile(r"/api(?:/v\d+)?/webhooks/\d+/[^/]+/?")
CONTENT_LIMIT = 2000  # what Discord accepts in one message's content


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> datetime: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> datetime:
        return datetime.now(UTC)


def is_discord_webhook(url: URL, api_base: URL) -> bool:
    """Discord's webhook path on one of Discord's hosts, or on the host `discord.api_base` names
    (a reverse proxy in front of Discord, or the simulated one)."""
    if not _WEBHOOK_PATH.fullmatch(url.path):
        return False
    official = url.scheme == "https" and url.host in DISCORD_HOSTS
    return official or (api_base.is_absolute() and url.origin() == api_base.origin())


def payload(alert: Alert, *, discord: bool) -> dict[str, Any]:
    if discord:
        content = f"[{'resolved' if alert.resolved else alert.severity}] {alert.message}"
        if len(content) > CONTENT_LIMIT:
            content = content[: CONTENT_LIMIT - 1] + "…"
        # Labels and reasons are shown as they are: no @everyone or role ping from them.
        return {"content": content, "allowed_mentions": {"parse": []}}
    return {
        "kind": alert.kind,
        "severity": alert.severity,
        "message": alert.message,
        "at": alert.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "details": {"resolved": alert.resolved, "conditions": list(alert.details)},
    }


def _failure(exc: Exception, timeout: float) -> str:
    """Why a delivery failed, in words that cannot hold the URL (aiohttp's messages may)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "its host name does not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        return f"cannot connect: {os.strerror(errno)}" if errno and errno > 0 else "cannot connect"
    return type(exc).__name__


def _parsed(url: str) -> URL | None:
    """An absolute http(s) URL, or None (yarl's errors quote the URL: they are not passed on)."""
    try:
        parsed = URL(url)
        host = parsed.host
    except ValueError:
        return None
    return parsed if parsed.scheme in ("http", "https") and host else None


class AlertWatcher:
    """Checks the backend's status on each `tick` and sends the alerts it calls for."""

    def __init__(
        self, live: LiveConfig, backend: Backend, session: aiohttp.ClientSession, clock: Clock
    ) -> None:
        self._live = live
        self._backend = backend
        self._session = session
        self._clock = clock
        self._alerter = Alerter()
        self._refused: str | None = None  # the unusable URL already named in the log
        self._failing = False
        self.deliveries = TaskSet()

    def tick(self) -> None:
        """One look at the status; never waits (deliveries go to the background)."""
        settings = self._live.now.settings
        alerts = settings.alerts
        if alerts.webhook_url is None:
            # No alerts: nothing watched, and a URL set later starts from what is open then.
            self._alerter = Alerter()
            return
        secret = alerts.webhook_url.get_secret_value()
        url = _parsed(secret)
        if url is None:
            if self._refused != secret:
                self._refused = secret
                log.warning("alerts.webhook_url is not an http(s) URL: no alerts are sent")
            return
        self._refused = None
        discord = is_discord_webhook(url, URL(settings.discord.api_base))
        found = self._alerter.update(
            self._backend.status(),
            mono=self._clock.monotonic(),
            now=self._clock.now(),
            interval=alerts.min_interval_minutes * 60,
            down_seconds=alerts.gateway_down_seconds,
        )
        for alert in found:
            log.info("alert %s%s: %s", alert.kind, " resolved" if alert.resolved else "", alert.message)
            body = payload(alert, discord=discord)
            self.deliveries.spawn(self._deliver(url, body, alert, alerts.timeout_seconds), name="alert")

    async def _deliver(self, url: URL, body: dict[str, Any], alert: Alert, limit: float) -> None:
        try:
            async with (
                asyncio.timeout(limit),
                self._session.post(url, json=body, allow_redirects=False) as response,
            ):
                if 200 <= response.status < 300:
                    return
                failure = f"the webhook answered {response.status}"
        except Exception as exc:
            failure = _failure(exc, limit)
        what = "resolved" if alert.resolved else "alert"
        log.warning("%s %s not delivered to alerts.webhook_url: %s", what, alert.kind, failure)

    async def run(self, interval: float) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                # Keep watching: logged once, and once more when it works again.
                if not self._failing:
                    log.exception("the alert watcher cannot read the status")
                self._failing = True
            else:
                if self._failing:
                    log.info("the alert watcher reads the status again")
                self._failing = False
            await asyncio.sleep(interval)


ALERTS = web.AppKey("alerts", AlertWatcher)


@contextlib.asynccontextmanager
async def _watching(app: web.Application, interval: float | None, clock: Clock) -> AsyncIterator[None]:
    settings = app[CONFIG].now.settings
    # An operator whose server cannot reach Discord directly cannot reach its webhooks either.
    proxy = await configured(settings.discord.proxy)
    async with aiohttp.ClientSession(connector=connector(proxy)) as session:
        watcher = app[ALERTS] = AlertWatcher(app[CONFIG], app[BACKEND], session, clock)
        loop = TaskSet()
        if interval is not None:
            loop.spawn(watcher.run(interval), name="alert watcher")
        try:
            yield
        finally:
            await loop.close()
            await watcher.deliveries.close()


async def alerts_ctx(app: web.Application) -> AsyncIterator[None]:
    """The alert watcher for the app's life (after the backend's context: it reads its status)."""
    async with _watching(app, 1.0, SystemClock()):
        yield


def alerts_context(
    *, interval: float | None = 1.0, clock: Clock | None = None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """`alerts_ctx` with another tick interval (None: ticks only by hand, `app[ALERTS].tick()`)
    or clock."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        async with _watching(app, interval, clock or SystemClock()):
            yield

    return context
