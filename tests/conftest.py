"""Fixtures for end-to-end tests: the simulated Discord, the real bridge, real clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import discord
import openai
import pytest
from aiohttp import web

from bot.backend import DiscordBackend
from bot.connect import open_backend
from bridge_api.app import make_app, make_runner
from bridge_api.settings import Settings, load_settings
from simdiscord import SimulatedDiscord

# Short enough that tests of the quiet-period end stay fast, long enough that the simulated
# Coze bot's own pauses between edits (a few ms) never trip it.
TEST_COMPLETION = {"quiet_seconds": 0.4, "first_reply_timeout": 3.0, "max_reply_seconds": 10.0}


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedDiscord]:
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with SimulatedDiscord() as simulated:
        yield simulated
    # The bridge points discord.py's process-wide class attributes at the simulation.
    discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = base, gateway


def sim_settings(sim: SimulatedDiscord, storage: Path, **sections: Any) -> Settings:
    discord_section = sim.discord_settings() | sections.pop("discord", {})
    completion = TEST_COMPLETION | sections.pop("completion", {})
    storage_section = {"path": str(storage / "bridge.db")} | sections.pop("storage", {})
    return load_settings(
        environ={}, discord=discord_section, completion=completion, storage=storage_section, **sections
    )


@dataclass
class Bridge:
    base_url: str
    backend: DiscordBackend
    http: aiohttp.ClientSession

    def openai(self, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key="unused", max_retries=0, **kwargs)


BridgeFactory = Callable[..., Any]


@pytest.fixture
async def start_bridge(sim: SimulatedDiscord, tmp_path: Path) -> AsyncIterator[BridgeFactory]:
    """Start the real bridge (discord.py + aiohttp) against the simulation; stop it at teardown.

    Bridges started in one test share their storage folder, as a restarted bridge would.
    """
    runners: list[web.AppRunner] = []
    stacks: list[Any] = []

    async def start(**sections: Any) -> Bridge:
        settings = sim_settings(sim, tmp_path, **sections)
        backend_cm = open_backend(settings)
        backend = await backend_cm.__aenter__()
        stacks.append(backend_cm)
        async with asyncio.timeout(10):
            await backend.wait_ready()
        runner = make_runner(make_app(settings, 0, backend=backend))
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        http = aiohttp.ClientSession()
        stacks.append(http)
        return Bridge(base_url=f"http://127.0.0.1:{port}", backend=backend, http=http)

    yield start
    for runner in runners:
        await runner.cleanup()
    for stack in reversed(stacks):
        if isinstance(stack, aiohttp.ClientSession):
            await stack.close()
        else:
            await stack.__aexit__(None, None, None)


@pytest.fixture
async def bridge(start_bridge: BridgeFactory) -> Bridge:
    bridge: Bridge = await start_bridge()
    return bridge
