"""The HTTP app over `MockBackend` on a free loopback port, for tests of the API's own rules."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from bot.interface import Finished, PromptRequest, ReplyEvent
from bot.mock import MockBackend
from bridge_api.app import make_app, serving
from bridge_api.settings import load_settings

DISCORD = {"bot_token": "b", "guild_id": 1, "coze_bot_id": 2, "channel_id": 3}


async def answer_fine(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
    yield Finished("stop", "fine")


@contextlib.asynccontextmanager
async def mock_bridge(**api: object) -> AsyncIterator[tuple[str, MockBackend]]:
    """The base URL and the backend of an app with these `api` settings that answers "fine"."""
    backend = MockBackend(answer_fine)
    settings = load_settings(environ={}, discord=DISCORD, api=api)
    async with serving(make_app(settings, 0, backend=backend)) as (_, port):
        yield f"http://127.0.0.1:{port}", backend
