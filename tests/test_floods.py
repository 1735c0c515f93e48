"""Floods stop before Discord (issue 11): requests per minute per caller, and a bounded queue
for posting slots."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest

from bridge_api.chunks import QUEUED
from bridge_api.flood import RateLimiter
from simdiscord import SimulatedDiscord
from simdiscord.coze import ReplyPlan
from tests.conftest import Bridge, BridgeFactory
from tests.mock_bridge import mock_bridge

BODY = {"model": "coze", "messages": [{"role": "user", "content": "hi"}]}


async def post(
    http: aiohttp.ClientSession, url: str, key: str | None = None
) -> tuple[int, dict[str, str], str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.post(url, json=BODY, headers=headers) as resp:
        body = await resp.json()
        return resp.status, dict(resp.headers), (body.get("error") or {}).get("code", "")


async def test_a_key_over_its_requests_per_minute_is_429_before_anything_is_posted() -> None:
    async with (
        mock_bridge(rate_limit_per_minute=2, keys=["sk-a", "sk-b"]) as (base, backend),
        aiohttp.ClientSession() as http,
    ):
        url = f"{base}/v1/chat/completions"
        assert [(await post(http, url, "sk-a"))[0] for _ in range(2)] == [200, 200]
        status, headers, code = await post(http, url, "sk-a")
        assert (status, code) == (429, "rate_limit_exceeded")
        assert 1 <= int(headers["Retry-After"]) <= 60
        assert len(backend.requests) == 2, "the third never reached Coze"
        assert (await post(http, url, "sk-b"))[0] == 200, "each key has its own minute"


async def test_without_keys_each_address_is_counted() -> None:
    async with mock_bridge(rate_limit_per_minute=1) as (base, backend), aiohttp.ClientSession() as http:
        url = f"{base}/v1/chat/completions"
        assert (await post(http, url))[0] == 200
        assert (await post(http, url))[0] == 429
        async with http.post(f"{base}/v1/images/generations", json={"prompt": "a cat"}) as resp:
            assert resp.status == 429, "image generation posts to Discord too"
        assert len(backend.requests) == 1


def test_the_window_slides() -> None:
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert limiter.wait("a") is None
    now[0] = 30.0
    assert limiter.wait("a") is None
    assert limiter.wait("a") == pytest.approx(30.0)
    now[0] = 60.0
    assert limiter.wait("a") is None, "the first request left the window"
    assert limiter.wait("a") == pytest.approx(30.0)
    assert RateLimiter(0).wait("a") is None, "0 is no limit"


async def test_past_max_waiting_requests_are_503_overloaded_and_waiting_streams_hear_queued(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(
        discord={"max_concurrent_posts": 1}, api={"max_waiting": 1, "ping_seconds": 0.2}
    )
    url = f"{bridge.base_url}/v1/chat/completions"
    gate = sim.hold("POST", "/channels/{channel_id}/threads")  # the one posting slot stays busy
    first = asyncio.ensure_future(post(bridge.http, url))
    async with asyncio.timeout(10):
        await sim.wait_for(lambda: bool(sim.held))
    async with bridge.http.post(url, json=BODY | {"stream": True}) as waiting:
        assert waiting.status == 200
        async with asyncio.timeout(10):
            head = await waiting.content.readuntil(QUEUED)
        assert b"data: " in head, "the role chunk, then the comment"
        for stream in (False, True):
            async with bridge.http.post(url, json=BODY | {"stream": stream}) as refused:
                assert refused.status == 503
                assert (await refused.json())["error"]["code"] == "overloaded"
                assert int(refused.headers["Retry-After"]) >= 1
                assert "x-should-retry" not in refused.headers, "nothing was posted: retrying is safe"
        gate.set()
        rest = (await waiting.read()).decode()
    assert rest.endswith("data: [DONE]\n\n")
    assert '"finish_reason":"stop"' in rest
    assert (await first)[0] == 200
    assert len(sim.prompts_received) == 2, "the refused requests posted nothing"
    threads = [channel for channel in sim.world.channels.values() if channel.is_thread]
    assert len(threads) == 2


async def test_streams_waiting_for_a_busy_token_hear_their_place_and_a_plain_one_gives_up(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    """One token, one prompt in flight at a time: the rest wait in the pool's queue."""
    bridge: Bridge = await start_bridge(
        discord={"user_tokens": sim.user_tokens[:1]},
        accounts={"max_in_flight": 1},
        api={"ping_seconds": 0.2},
        completion={"first_reply_timeout": 1.5},
    )
    url = f"{bridge.base_url}/v1/chat/completions"
    sim.coze.gate = gate = asyncio.Event()  # Coze holds its first reply: the token stays busy
    async with contextlib.AsyncExitStack() as streams:
        first = await streams.enter_async_context(bridge.http.post(url, json=BODY | {"stream": True}))
        async with asyncio.timeout(10):
            await sim.wait_for(lambda: len(sim.prompts_received) == 1)
        second = await streams.enter_async_context(bridge.http.post(url, json=BODY | {"stream": True}))
        async with asyncio.timeout(10):
            await second.content.readuntil(b": queued, 0 ahead\n\n")
        third = await streams.enter_async_context(bridge.http.post(url, json=BODY | {"stream": True}))
        async with asyncio.timeout(10):
            await third.content.readuntil(b": queued, 1 ahead\n\n")
        async with bridge.http.get(f"{bridge.base_url}/v1/status") as resp:
            status = await resp.json()
        assert (status["queue"]["length"], status["queue"]["limit"]) == (2, 100)
        assert status["tokens"][0]["in_flight"] == 1
        # Busy, not gone: the token still counts for the model, and the gateway has been up a while.
        assert status["models"][0]["tokens_available"] == 1
        assert status["state"] == "ready"
        assert status["state_since"] is not None
        async with bridge.http.get(f"{bridge.base_url}/metrics") as resp:
            metrics = await resp.text()
        assert "coze_bridge_queue_length 2.0" in metrics
        assert 'coze_bridge_token_in_flight{token="user token #1"} 1.0' in metrics
        gate.set()
        async with asyncio.timeout(20):
            ends = [(await stream.read()).decode() for stream in (first, second, third)]
    assert all(end.endswith("data: [DONE]\n\n") and '"finish_reason":"stop"' in end for end in ends)
    assert len(sim.prompts_received) == 3

    # A plain request has no way to hear it is queued: it waits no longer than for a first reply.
    sim.script = lambda prompt: ReplyPlan(text="slow " * 24, chunk_chars=5, step_delay=0.15)
    async with bridge.http.post(url, json=BODY | {"stream": True}) as slow:
        await slow.content.readuntil(b'"content":"slow')  # the token is busy with this answer
        started = time.monotonic()
        status_code, headers, code = await post(bridge.http, url)
        waited = time.monotonic() - started
        assert (status_code, code) == (503, "overloaded")
        assert int(headers["Retry-After"]) >= 1
        assert 1.4 < waited < 3.0, "completion.first_reply_timeout, not the slow answer's end"
        assert len(sim.prompts_received) == 4, "nothing was posted for it"
        assert (await slow.read()).decode().endswith("data: [DONE]\n\n")
