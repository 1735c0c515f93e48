"""The settings in force while serving, and the one way to reload them (SIGHUP, POST /admin/reload).

A reload swaps one immutable `Config` for another, so a request reads one consistent version,
then hands the backend the new settings: user tokens, per-token settings, account defaults and
models change at once (open replies carry on with what they started with). What the running
parts were built from (the listener bot's connection, the reply timers, the database, the
listening socket, the image client) stays as it started: a changed value there is named as
waiting for the next start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.config import DiscordSettings
from bot.interface import Backend, StartupError
from bridge_api.flood import RateLimiter
from bridge_api.settings import ConfigError, Settings

log = logging.getLogger(__name__)

# What of [discord] the backend takes live: the user tokens, and the Coze bot and channel that
# make the one model served without [[models]] (models are live).
LIVE_DISCORD = frozenset({"user_tokens", "coze_bot_id", "channel_id"})
# Sections, or `section.field`s, that only a restart applies.
AT_RESTART = (
    # The listener bot's session, the guild, the REST base and proxy, the posting slots.
    *(f"discord.{name}" for name in DiscordSettings.model_fields if name not in LIVE_DISCORD),
    # Each reply reads these as it starts, so they could apply to new replies; but the backend
    # takes them once (its reconfigure leaves them alone), and the API's wait for a token of a
    # plain request (first_reply_timeout) must be the backend's: one version per run.
    "completion",
    "storage",
    "instance",
    "api.host",
    "api.port",
    "api.max_body_bytes",
    "api.header_timeout_seconds",
    "api.public_url",
    "images.proxy",
    "images.allow_private_networks",
    # The image cache is opened once, with its folder and bound.
    "images.cache_dir",
    "images.cache_mb",
)


@dataclass(frozen=True, slots=True)
class Config:
    settings: Settings
    # Every accepted API key, encoded once for constant-time comparison.
    keys: tuple[bytes, ...]
    # The keys that open /admin/* (and nothing else), encoded likewise.
    admin_keys: tuple[bytes, ...]
    # Requests per minute per caller, for the routes that post to Discord.
    limiter: RateLimiter

    @classmethod
    def of(cls, settings: Settings, limiter: RateLimiter | None = None) -> Config:
        keys = tuple(key.get_secret_value().encode() for key in settings.accepted_keys())
        admin_keys = tuple(key.get_secret_value().encode() for key in settings.api.admin_keys)
        return cls(settings, keys, admin_keys, limiter or RateLimiter(settings.api.rate_limit_per_minute))


Load = Callable[[], Settings]


class LiveConfig:
    """Holds the `Config` in force; `reload` reads the settings again and replaces it."""

    __slots__ = ("_load", "now", "on_reload")

    def __init__(self, settings: Settings, load: Load | None = None) -> None:
        self.now = Config.of(settings)
        self._load = load
        # Called with the settings in force after each reload, once the backend has them.
        self.on_reload: list[Callable[[Settings], None]] = []

    def reload(self, backend: Backend) -> list[str]:
        """The one way to reload: read the settings again, put them in force, hand them to the
        backend; return the changed names that wait for a restart.

        Raises `ConfigError` (logged in one line) when they are invalid: the old ones stay.
        """
        before = self.now
        try:
            if self._load is None:
                raise ConfigError("these settings came from no file or environment to read again")
            waiting = self.apply(self._load())
            try:
                backend.reconfigure(self.now.settings)
            except StartupError as exc:  # e.g. a token's own proxy is no proxy URL
                self.now = before
                raise ConfigError(f"config error: {exc}") from None
        except ConfigError as exc:
            log.error("reload refused, the settings in force stay: %s", exc)
            raise
        for hook in self.on_reload:
            hook(self.now.settings)
        log.info("settings reloaded")
        if waiting:
            log.warning("changed settings that apply at the next start: %s", ", ".join(waiting))
        return waiting

    def apply(self, loaded: Settings) -> list[str]:
        """Put in force what may change while serving; return the changed names that wait for a restart."""
        old = self.now.settings
        waiting = [name for name in AT_RESTART if _value(loaded, name) != _value(old, name)]
        kept = loaded.model_copy(
            update={section: getattr(old, section) for section in AT_RESTART if "." not in section}
        )
        for name in (name for name in AT_RESTART if "." in name):
            section, field = name.split(".")
            part = getattr(kept, section).model_copy(update={field: _value(old, name)})
            kept = kept.model_copy(update={section: part})
        # Callers' counts survive a reload that leaves their limit alone.
        same_limit = kept.api.rate_limit_per_minute == old.api.rate_limit_per_minute
        self.now = Config.of(kept, self.now.limiter if same_limit else None)
        return waiting


def _value(settings: Settings, name: str) -> Any:
    found: Any = settings
    for part in name.split("."):
        found = getattr(found, part)
    return found
