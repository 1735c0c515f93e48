"""Fixtures for end-to-end tests: the simulated Discord, the real bridge, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import discord
import openai
import pytest

from bot.interface import Backend, open_discord_backend
from bridge_api.app import make_app, serving
from bridge_api.settings import Settings, load_settings
from simdiscord import SimulatedDiscord
from tests.pg_server import pg_private_data, pg_server, postgres_url, private_pg  # noqa: F401  (fixtures)

# Short enough that tests of the quiet-period end stay fast, long enough that the simulated
# Coze bot's own pauses between edits (a few ms) never trip it.
TEST_COMPLETION = {"quiet_seconds": 0.4, "first_reply_timeout": 3.0, "max_reply_seconds": 10.0}
# No pacing: tests that are not about it post as fast as the simulated Discord lets them (the
# pacing tests set accounts.* themselves).
TEST_ACCOUNTS = {"min_gap_seconds": 0.0, "jitter_seconds": 0.0, "max_in_flight": 64}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Close an event loop looptime's hook makes for a plain (sync) test: left open, it is
    collected during some later test and fails it with an "unclosed event loop" warning."""
    policy = asyncio.get_event_loop_policy()
    before = _policy_loop(policy)
    try:
        return (yield)
    finally:
        made = _policy_loop(policy)
        if made is not None and made is not before and not made.is_running():
            made.close()
            policy.set_event_loop(before)


def _policy_loop(policy: asyncio.AbstractEventLoopPolicy) -> asyncio.AbstractEventLoop | None:
    # The loop the policy holds for this thread, without making one (get_event_loop would).
    local = getattr(policy, "_local", None)
    loop = getattr(local, "_loop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedDiscord]:
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with SimulatedDiscord() as simulated:
        yield simulated
    # The bridge points discord.py's process-wide class attributes at the simulation.
    discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = base, gateway


def sim_settings(sim: SimulatedDiscord, folder: Path, **sections: Any) -> Settings:
    discord_section = sim.discord_settings() | sections.pop("discord", {})
    completion = TEST_COMPLETION | sections.pop("completion", {})
    accounts = TEST_ACCOUNTS | sections.pop("accounts", {})
    storage_section = sections.pop("storage", {})
    if "url" not in storage_section:  # a PostgreSQL url takes no SQLite path
        storage_section = {"path": str(folder / "bridge.db")} | storage_section
    return load_settings(
        environ={},
        discord=discord_section,
        completion=completion,
        accounts=accounts,
        storage=storage_section,
        **sections,
    )


@dataclass
class Bridge:
    base_url: str
    backend: Backend
    http: aiohttp.ClientSession
    stack: contextlib.AsyncExitStack

    def openai(self, **kwargs: Any) -> openai.AsyncOpenAI:
        options = {"api_key": "unused", "max_retries": 0} | kwargs
        return openai.AsyncOpenAI(base_url=self.base_url + "/v1", **options)

    async def stop(self) -> None:
        """Stop this bridge as a restart would (its storage stays)."""
        await self.stack.aclose()


BridgeFactory = Callable[..., Any]


@pytest.fixture
async def start_bridge(sim: SimulatedDiscord, tmp_path: Path) -> AsyncIterator[BridgeFactory]:
    """Start the real bridge (discord.py + aiohttp) against the simulation; stop it at teardown.

    Bridges started in one test share their storage folder, as a restarted bridge would.
    `settings=` replaces the sections built from the simulation; `wait_ready=False` returns
    without waiting for the gateway (which may never become ready).
    """
    stacks: list[contextlib.AsyncExitStack] = []

    async def start(settings: Settings | None = None, *, wait_ready: bool = True, **sections: Any) -> Bridge:
        settings = settings or sim_settings(sim, tmp_path, **sections)
        stack = contextlib.AsyncExitStack()
        stacks.append(stack)
        backend = await stack.enter_async_context(open_discord_backend(settings))
        if wait_ready:
            async with asyncio.timeout(10):
                await backend.wait_ready()
        _, port = await stack.enter_async_context(serving(make_app(settings, 0, backend=backend)))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        return Bridge(f"http://127.0.0.1:{port}", backend, http, stack)

    yield start
    for stack in reversed(stacks):
        await stack.aclose()


@pytest.fixture
async def bridge(start_bridge: BridgeFactory) -> Bridge:
    bridge: Bridge = await start_bridge()
    return bridge


async def failed_start(folder: Path, storage: str) -> tuple[str, list[str]]:
    """Run the CLI with a `[storage]` section (TOML lines) it cannot open; it must exit 1.

    The store opens before Discord is asked anything, so no Discord is needed to see it fail.
    Returns all it printed, and its `coze-bridge:` lines.
    """
    config = folder / "config.toml"
    config.write_text(
        '[discord]\nbot_token = "t"\nguild_id = 1\ncoze_bot_id = 2\nchannel_id = 3\n'
        f'api_base = "http://127.0.0.1:9/api"\n[storage]\n{storage}\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge_api", "--config", str(config), "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    lines = [line for line in err.decode().splitlines() if line.startswith("coze-bridge:")]
    return (out + err).decode(), lines
