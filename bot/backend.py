"""The Discord implementation of `bot.interface.Backend` (work in progress)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.config import CompletionSettings, DiscordSettings
from bot.interface import Backend


@asynccontextmanager
async def open_backend(discord: DiscordSettings, completion: CompletionSettings) -> AsyncIterator[Backend]:
    """Connect to Discord, yield a ready-to-use backend, and close everything on exit."""
    raise NotImplementedError
    yield  # pragma: no cover
