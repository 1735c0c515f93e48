"""Shutdown at any moment of a stream (issue 11): while its thread is made, while its prompt is
posted, while its reply is awaited, it ends with the in-band server_shutdown error and [DONE].
Discord here never answers the held call."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from bot.interface import open_discord_backend
from bridge_api.app import make_app, serving
from simdiscord import ReplyPlan, SimulatedDiscord
from tests.conftest import sim_settings

BODY = {"model": "coze", "messages": [{"role": "user", "content": "hello"}]}
STAGES = {
    "thread": ("POST", "/channels/{channel_id}/threads"),
    "post": ("POST", "/channels/{channel_id}/messages"),
}


@pytest.mark.parametrize("stage", ["thread", "post", "reply"])
async def test_shutdown_at_every_stage_ends_the_stream(
    sim: SimulatedDiscord, tmp_path: Path, stage: str
) -> None:
    gate = sim.hold(*STAGES[stage]) if stage in STAGES else None
    sim.script = lambda prompt: ReplyPlan(text="never finished", silent=True)
    settings = sim_settings(sim, tmp_path)
    async with open_discord_backend(settings) as backend, aiohttp.ClientSession() as http:
        async with asyncio.timeout(10):
            await backend.wait_ready()
        app = make_app(settings, 0, backend=backend)
        async with serving(app) as (runner, port):
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            async with http.post(url, json=BODY | {"stream": True}) as resp:
                async with asyncio.timeout(10):
                    # The request has reached its stage: Discord holds the call, or Coze is silent.
                    await sim.wait_for(lambda: bool(sim.held) if gate else bool(sim.prompts_received))
                stopping = asyncio.ensure_future(runner.cleanup())  # what SIGTERM does
                async with asyncio.timeout(8):
                    body = await resp.read()
            async with asyncio.timeout(8):
                await stopping
    if gate is not None:
        gate.set()
    frames = [f[6:] for f in body.decode().split("\n\n") if f.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    assert json.loads(frames[-2])["error"]["code"] == "server_shutdown"
