"""The listener bot's Message Content intent switched off, seen at run time, end to end.

Two ways it shows: the simulated Discord refuses the session with 4014 (the portal switch
off, as real Discord does), or it delivers Coze's messages blank (`withhold_content`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

import aiohttp
import discord
import pytest

from bot.gateway import Gateway
from bot.status import MESSAGE_CONTENT_SWITCH, IntentMissing
from simdiscord import ReplyPlan, SimulatedDiscord
from simdiscord.gateway import MESSAGE_CONTENT_INTENT
from simdiscord.world import GATEWAY_MESSAGE_CONTENT, GATEWAY_MESSAGE_CONTENT_LIMITED
from tests.conftest import Bridge, BridgeFactory
from tests.mock_bridge import mock_bridge

USER = [{"role": "user", "content": "hello"}]
# Blank replies have no text to end on quiet: they run to the hard cap, kept short here.
SHORT_REPLIES = {"first_reply_timeout": 0.5, "max_reply_seconds": 1.0}


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # The bridge's own Gateway is made inside open_discord_backend: its class sets the pace.
    monkeypatch.setattr(Gateway, "refused_retry_seconds", 0.05)


async def get(bridge: Bridge, path: str) -> tuple[int, Any]:
    async with bridge.http.get(bridge.base_url + path) as resp:
        return resp.status, await resp.json()


async def chat(bridge: Bridge, *, stream: bool = False) -> tuple[int, Any]:
    body = {"model": "coze", "messages": USER, "stream": stream}
    async with bridge.http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as resp:
        if not stream:
            return resp.status, await resp.json()
        frames = [f[6:] for f in (await resp.read()).decode().split("\n\n") if f.startswith("data: ")]
        return resp.status, frames


async def refusals(sim: SimulatedDiscord, count: int) -> None:
    """Wait for the gateway's `count`th refusal: the bridge asks again only once it has taken
    the one before (its state says so)."""
    async with asyncio.timeout(5):
        await sim.wait_for(lambda: sim.gateway_refusals >= count)


async def ready_again(bridge: Bridge) -> None:
    async with asyncio.timeout(5):
        await bridge.backend.wait_ready()


def switch_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and MESSAGE_CONTENT_SWITCH in r.getMessage()
    ]


def intent_refused(reason_status: str) -> dict[str, str]:
    return {"status": reason_status, "reason": "message_content_intent", "fix": MESSAGE_CONTENT_SWITCH}


async def test_blank_coze_messages_say_the_intent_is_missing(
    sim: SimulatedDiscord, start_bridge: BridgeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    bridge: Bridge = await start_bridge(completion=SHORT_REPLIES)
    sim.script = lambda prompt: ReplyPlan(text="words nobody will read", step_delay=0.002, suggestions=["x"])
    sim.withhold_content = True
    with caplog.at_level(logging.INFO):
        plain = await asyncio.gather(*(chat(bridge) for _ in range(3)))
        stream_status, frames = await chat(bridge, stream=True)
    # A blank reply is no answer: each request ends with the reply timeout, none hangs.
    assert [(status, body["error"]["code"]) for status, body in plain] == [(504, "timeout")] * 3
    assert stream_status == 200
    assert json.loads(frames[-2])["error"]["code"] == "timeout"
    assert frames[-1] == "[DONE]"
    assert len(sim.prompts_received) == 4

    errors = switch_errors(caplog)
    assert len(errors) == 1, errors
    assert "arrive empty" in errors[0]
    assert await get(bridge, "/readyz") == (503, intent_refused("ready"))
    status, body = await get(bridge, "/v1/status")
    assert status == 200
    assert body["state"] == "ready", "the gateway is connected; only its messages are empty"
    intents = body["intents"]
    assert (intents["message_content"], intents["seen_as"]) == ("missing", "blank_messages")
    assert intents["since"].endswith("+00:00")

    # Content comes again (the switch is on and the session that followed carries it).
    sim.withhold_content = False
    with caplog.at_level(logging.INFO):
        status, body = await chat(bridge)
    assert (status, body["choices"][0]["message"]["content"]) == (200, "words nobody will read")
    assert "carry content again" in caplog.text
    assert await get(bridge, "/readyz") == (200, {"status": "ready"})
    _, body = await get(bridge, "/v1/status")
    assert body["intents"] == {"message_content": "ok", "since": None, "seen_as": None}


async def test_the_portal_switch_off_at_start_is_retried_until_it_is_on(
    sim: SimulatedDiscord,
    start_bridge: BridgeFactory,
    quick_retries: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim.message_content_intent = False
    with caplog.at_level(logging.INFO):
        bridge = await start_bridge(wait_ready=False)
        await refusals(sim, 3)
        assert await get(bridge, "/readyz") == (503, intent_refused("degraded"))
        _, body = await get(bridge, "/v1/status")
        assert (body["intents"]["message_content"], body["intents"]["seen_as"]) == (
            "missing",
            "gateway_refused",
        )
        status, error = await chat(bridge)
        assert (status, error["error"]["code"]) == (503, "gateway_not_ready")
        assert sim.prompts_received == []
        errors = switch_errors(caplog)
        assert len(errors) == 1, errors
        assert "4014" in errors[0]

        sim.message_content_intent = True
        await ready_again(bridge)
    assert await get(bridge, "/readyz") == (200, {"status": "ready"})
    assert "Message Content intent is on again" in caplog.text
    _, body = await get(bridge, "/v1/status")
    assert (body["state"], body["intents"]["message_content"]) == ("ready", "ok")
    status, answer = await chat(bridge)
    assert status == 200
    assert answer["choices"][0]["message"]["content"].startswith('You asked: "hello"')


async def test_the_switch_turned_off_while_running_recovers_too(
    sim: SimulatedDiscord, bridge: Bridge, quick_retries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def at_once(self: discord.Client, shard_id: int | None, *, initial: bool = False) -> None:
        pass

    # discord.py waits 5 s before identifying again inside one connect() (Discord's pace).
    monkeypatch.setattr(discord.Client, "before_identify_hook", at_once)
    sim.message_content_intent = False
    # Intents are checked at IDENTIFY: a session Discord cannot resume must identify anew.
    await sim.drop_gateway(resumable=False)
    await refusals(sim, 2)
    assert await get(bridge, "/readyz") == (503, intent_refused("degraded"))
    sim.message_content_intent = True
    await ready_again(bridge)
    assert await get(bridge, "/readyz") == (200, {"status": "ready"})
    status, answer = await chat(bridge)
    assert status == 200
    assert answer["choices"][0]["message"]["content"].startswith("You asked:")


async def test_shutdown_does_not_wait_out_the_retry(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    sim.message_content_intent = False
    bridge = await start_bridge(wait_ready=False)  # the real 30 s between attempts
    async with asyncio.timeout(5):
        await sim.wait_for(lambda: sim.gateway_refusals >= 1)
        # Each pass awaits a /readyz read, which lets the bridge take the refusal meanwhile.
        while (await get(bridge, "/readyz"))[1].get("reason") is None:
            pass
        await bridge.stop()
    assert sim.gateway_refusals == 1


@pytest.mark.parametrize(
    ("flags", "closed"),
    [(0, True), (GATEWAY_MESSAGE_CONTENT, False), (GATEWAY_MESSAGE_CONTENT_LIMITED, False)],
    ids=["switch off", "switch on", "verified app's limited flag"],
)
async def test_the_simulation_refuses_the_intent_as_discord_does(
    sim: SimulatedDiscord, flags: int, closed: bool
) -> None:
    sim.world.application_flags = flags
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(sim.gateway_url + "?v=10&encoding=json") as ws,
    ):
        assert (await ws.receive_json())["op"] == 10
        identify = {"token": sim.bot_token, "intents": MESSAGE_CONTENT_INTENT | 1, "properties": {}}
        await ws.send_json({"op": 2, "d": identify})
        frame = await ws.receive(timeout=5)
        if closed:
            assert (frame.type, ws.close_code, frame.extra) == (
                aiohttp.WSMsgType.CLOSE,
                4014,
                "Disallowed intent(s).",
            )
        else:
            assert json.loads(frame.data)["t"] == "READY"
            assert json.loads(frame.data)["d"]["application"]["flags"] == flags
    assert sim.gateway_refusals == int(closed)


async def test_status_and_readyz_through_the_port() -> None:
    async with mock_bridge() as (base, backend), aiohttp.ClientSession() as http:
        async with http.get(base + "/v1/status") as resp:
            assert (await resp.json())["intents"] == {"message_content": "ok", "since": None, "seen_as": None}
        backend.intent_missing = IntentMissing(datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), "gateway_refused")
        async with http.get(base + "/v1/status") as resp:
            assert (await resp.json())["intents"] == {
                "message_content": "missing",
                "since": "2025-01-02T03:04:05+00:00",
                "seen_as": "gateway_refused",
            }
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"]
            assert await resp.json() == intent_refused("ready")
