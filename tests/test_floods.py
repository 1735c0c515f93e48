"""Floods stop before Discord (issue 11): requests per minute per caller, and a bounded queue
for posting slots."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from bridge_api.chunks import QUEUED
from bridge_api.flood import RateLimiter
from simdiscord import SimulatedDiscord
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
