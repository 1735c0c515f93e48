"""The settings in force while serving, and what a reload (SIGHUP) may change in them.

A reload swaps one immutable `Config` for another, so a request reads one consistent version.
What the running parts were built from (the Discord connection, the models and tokens the
backend holds, the database, the listening socket, the image client) stays as it started: a
changed value there is logged as waiting for the next start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bridge_api.flood import RateLimiter
from bridge_api.settings import Settings

log = logging.getLogger(__name__)

# Sections, or `section.field`s, that only a restart applies.
AT_RESTART = (
    "discord",
    "models",
    "completion",
    "accounts",
    "storage",
    "api.host",
    "api.port",
    "api.max_body_bytes",
    "api.header_timeout_seconds",
    "images.proxy",
    "images.allow_private_networks",
)


@dataclass(frozen=True, slots=True)
class Config:
    settings: Settings
    # Every accepted API key, encoded once for constant-time comparison.
    keys: tuple[bytes, ...]
    # Requests per minute per caller, for the routes that post to Discord.
    limiter: RateLimiter

    @classmethod
    def of(cls, settings: Settings, limiter: RateLimiter | None = None) -> Config:
        keys = tuple(key.get_secret_value().encode() for key in settings.accepted_keys())
        return cls(settings, keys, limiter or RateLimiter(settings.api.rate_limit_per_minute))


class LiveConfig:
    """Holds the `Config` in force; `reload` replaces it."""

    __slots__ = ("now",)

    def __init__(self, settings: Settings) -> None:
        self.now = Config.of(settings)

    def reload(self, loaded: Settings) -> list[str]:
        """Apply what may change while serving; return the changed names that wait for a restart."""
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
