"""The simulated Discord at the protocol level: what discord.py and the bridge rely on."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from simdiscord import ReplyPlan, SimulatedDiscord
from tests.conftest import Bridge

GUILDS_MESSAGES = (1 << 0) | (1 << 9)
MESSAGE_CONTENT = 1 << 15


async def gateway_events(
    sim: SimulatedDiscord, http: aiohttp.ClientSession, *, compress: str | None, intents: int
) -> AsyncIterator[dict[str, Any]]:
    """Identify as the listener bot over a raw websocket and yield decoded dispatches."""
    query = "?v=10&encoding=json" + (f"&compress={compress}" if compress else "")
    inflate = zlib.decompressobj()
    async with http.ws_connect(sim.gateway_url + query) as ws:
        async for frame in ws:
            if compress == "zlib-stream":
                assert frame.data.endswith(b"\x00\x00\xff\xff"), "each message must end on a sync flush"
                payload = json.loads(inflate.decompress(frame.data))
            else:
                payload = json.loads(frame.data)
            if payload["op"] == 10:
                await ws.send_json(
                    {"op": 2, "d": {"token": sim.bot_token, "intents": intents, "properties": {}}}
                )
            elif payload["op"] == 0:
                yield payload


async def post(
    http: aiohttp.ClientSession, sim: SimulatedDiscord, token: str, channel: int, content: str
) -> Any:
    async with http.post(
        f"{sim.api_base}/channels/{channel}/messages",
        json={"content": content},
        headers={"Authorization": token},
    ) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("compress", ["zlib-stream", None])
async def test_gateway_speaks_zlib_and_plain(sim: SimulatedDiscord, compress: str | None) -> None:
    sim.script = lambda prompt: ReplyPlan(
        text="hi there", chunk_chars=3, step_delay=0.001, suggestions=["next"]
    )
    async with aiohttp.ClientSession() as http:
        events = gateway_events(sim, http, compress=compress, intents=GUILDS_MESSAGES | MESSAGE_CONTENT)
        kinds = []
        async with asyncio.timeout(5):
            async for event in events:
                kinds.append(event["t"])
                if event["t"] == "GUILD_CREATE":
                    await post(http, sim, sim.user_tokens[0], sim.channel_id, f"<@{sim.coze_bot_id}> hello")
                if event["t"] == "MESSAGE_UPDATE" and event["d"]["components"]:
                    final = event["d"]
                    break
        await events.aclose()
    assert kinds[:2] == ["READY", "GUILD_CREATE"]
    assert final["content"] == "hi there"
    assert final["message_reference"]["message_id"] == str(sim.prompts_received[0].message_id)
    assert final["components"][0]["components"][0]["label"] == "next"


async def test_without_message_content_intent_replies_arrive_blank(sim: SimulatedDiscord) -> None:
    sim.script = lambda prompt: ReplyPlan(text="secret words", chunk_chars=50, suggestions=["x"])
    async with aiohttp.ClientSession() as http:
        events = gateway_events(sim, http, compress=None, intents=GUILDS_MESSAGES)
        async with asyncio.timeout(5):
            async for event in events:
                if event["t"] == "GUILD_CREATE":
                    await post(http, sim, sim.user_tokens[0], sim.channel_id, f"<@{sim.coze_bot_id}> hi")
                if event["t"] == "MESSAGE_CREATE" and event["d"]["author"]["id"] == str(sim.coze_bot_id):
                    assert event["d"]["content"] == ""
                    break
        await events.aclose()


async def test_coze_ignores_bot_authored_prompts(sim: SimulatedDiscord) -> None:
    async with aiohttp.ClientSession() as http:
        status, _ = await post(http, sim, f"Bot {sim.bot_token}", sim.channel_id, f"<@{sim.coze_bot_id}> hi")
        assert status == 200
        async with asyncio.timeout(5):
            await sim.wait_for(lambda: bool(sim.prompts_ignored))
    assert sim.prompts_received == []
    assert not any(m.author_id == sim.coze_bot_id for m in sim.messages)


async def test_rest_checks_tokens_and_limits(sim: SimulatedDiscord) -> None:
    async with aiohttp.ClientSession() as http:
        status, body = await post(http, sim, "not-a-token", sim.channel_id, "hi")
        assert (status, body["message"]) == (401, "401: Unauthorized")
        # A user token sent with the bot prefix is not a bot token.
        status, _ = await post(http, sim, f"Bot {sim.user_tokens[0]}", sim.channel_id, "hi")
        assert status == 401
        status, _ = await post(http, sim, sim.user_tokens[0], sim.channel_id, "x" * 2001)
        assert status == 400
        status, _ = await post(http, sim, sim.user_tokens[0], 12345, "hi")
        assert status == 404
        sim.fail_next("POST", "/channels/{channel_id}/messages", 503)
        status, _ = await post(http, sim, sim.user_tokens[0], sim.channel_id, "hi")
        assert status == 503
        status, _ = await post(http, sim, sim.user_tokens[0], sim.channel_id, "hi")
        assert status == 200


async def test_mentions_follow_allowed_mentions(sim: SimulatedDiscord) -> None:
    content = f"<@{sim.coze_bot_id}> and <@{sim.world.human.id}>"
    body = {"content": content, "allowed_mentions": {"parse": [], "users": [str(sim.coze_bot_id)]}}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sim.api_base}/channels/{sim.channel_id}/messages",
            json=body,
            headers={"Authorization": sim.user_tokens[0]},
        ) as resp,
    ):
        data = await resp.json()
    assert [m["id"] for m in data["mentions"]] == [str(sim.coze_bot_id)]


async def test_discordpy_resumes_after_a_drop_and_the_reply_completes(
    sim: SimulatedDiscord, bridge: Bridge
) -> None:
    answer = "A reply that keeps streaming while the gateway drops and comes back."
    sim.script = lambda prompt: ReplyPlan(text=answer, chunk_chars=4, step_delay=0.02, suggestions=["ok"])
    async with bridge.openai() as client:
        stream = await client.chat.completions.create(
            model="coze", messages=[{"role": "user", "content": "go"}], stream=True
        )
        text = ""
        dropped = False
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            if text and not dropped:
                dropped = True
                await sim.drop_gateway(resumable=True)
    assert text == answer
    assert sim.gateway.resumes == 1
    assert sim.gateway.identifies == 1


def test_rate_limit_buckets_announce_and_enforce_their_limit() -> None:
    from simdiscord.ratelimit import RateLimits

    now = [100.0]
    limits = RateLimits(lambda: now[0], limit=2, window=1.0)
    first, second, third = (limits.check("t", "POST /channels/{channel_id}/threads", "1") for _ in range(3))
    assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
    assert [v.headers["X-RateLimit-Remaining"] for v in (first, second, third)] == ["1", "0", "0"]
    assert third.headers["X-RateLimit-Scope"] == "user"
    assert third.retry_after == 1.0
    # Another channel, another token or another route is another bucket.
    assert limits.check("t", "POST /channels/{channel_id}/threads", "2").allowed
    assert limits.check("u", "POST /channels/{channel_id}/threads", "1").allowed
    assert limits.check("t", "POST /channels/{channel_id}/messages", "1").allowed
    now[0] += 1.0
    assert limits.check("t", "POST /channels/{channel_id}/threads", "1").allowed
    assert limits.refused == 1
