"""Shutdown at any moment of a request (issue 11): while its thread is made, while its prompt is
posted, while its reply is awaited. A stream ends with the in-band server_shutdown error and
[DONE]; a plain request gets 503 server_shutdown. Discord here never answers the held call."""

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


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
@pytest.mark.parametrize("stage", ["thread", "post", "reply"])
async def test_shutdown_at_every_stage_ends_the_request(
    sim: SimulatedDiscord, tmp_path: Path, stage: str, stream: bool
) -> None:
    gate = sim.hold(*STAGES[stage]) if stage in STAGES else None
    sim.script = lambda prompt: ReplyPlan(text="never finished", silent=True)
    settings = sim_settings(sim, tmp_path)
    async with open_discord_backend(settings) as backend, aiohttp.ClientSession() as http:
        async with asyncio.timeout(10):
            await backend.wait_ready()
        async with serving(make_app(settings, 0, backend=backend)) as (runner, port):

            async def call() -> tuple[int, bytes]:
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                async with http.post(url, json=BODY | {"stream": stream}) as resp:
                    return resp.status, await resp.read()

            request = asyncio.ensure_future(call())
            async with asyncio.timeout(10):
                # The request has reached its stage: Discord holds the call, or Coze is silent.
                await sim.wait_for(lambda: bool(sim.held) if gate else bool(sim.prompts_received))
            stopping = asyncio.ensure_future(runner.cleanup())  # what SIGTERM does
            async with asyncio.timeout(8):
                status, body = await request
                await stopping
    if gate is not None:
        gate.set()
    if stream:
        frames = [f[6:] for f in body.decode().split("\n\n") if f.startswith("data: ")]
        assert frames[-1] == "[DONE]"
        assert json.loads(frames[-2])["error"]["code"] == "server_shutdown"
    else:
        assert status == 503, body
        assert json.loads(body)["error"]["code"] == "server_shutdown"
