"""The token pool end to end: real discord.py and HTTP clients against the simulated Discord,
pacing measured on the simulation's clock."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import aiohttp

from bot.status import TokenState
from bot.token_pool import fingerprint
from simdiscord import SimulatedDiscord
from tests.conftest import Bridge, BridgeFactory, sim_settings

PACED = {"min_gap_seconds": 0.3, "jitter_seconds": 0.2, "max_in_flight": 2}


async def chat(
    bridge: Bridge, text: str = "hello", *, stream: bool = False
) -> tuple[int, dict[str, str], str]:
    body = {"model": "coze", "stream": stream, "messages": [{"role": "user", "content": text}]}
    async with bridge.http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def status(bridge: Bridge) -> dict[str, Any]:
    async with bridge.http.get(f"{bridge.base_url}/v1/status") as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def queue_reaches(bridge: Bridge, length: int) -> None:
    async with asyncio.timeout(10):
        while bridge.backend.status().queue.length != length:  # noqa: ASYNC110
            # The queue lives in the bridge, which signals nothing: read as a monitor would.
            await asyncio.sleep(0.01)  # sleep-ok: polls a reading with a deadline, as a monitor does


def posts_by_author(sim: SimulatedDiscord) -> dict[int, list[float]]:
    times: dict[int, list[float]] = {}
    for post in sim.world.prompt_posts:
        times.setdefault(post.author_id, []).append(post.at)
    return times


async def test_a_tokens_posts_keep_their_gap_and_in_flight_bound(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(
        discord={"user_tokens": sim.user_tokens[:2]}, accounts=PACED, completion={"max_reply_seconds": 30}
    )
    sim.coze.gate = asyncio.Event()  # Coze holds every reply: the tokens stay in flight
    requests = [asyncio.ensure_future(chat(bridge, f"q{n}")) for n in range(6)]
    async with asyncio.timeout(10):
        await sim.wait_for(lambda: len(sim.world.prompt_posts) == 4)
    await queue_reaches(bridge, 2)
    body = await status(bridge)
    assert [t["in_flight"] for t in body["tokens"]] == [2, 2], "each token at its max_in_flight"
    assert len(sim.world.prompt_posts) == 4, "the rest wait in the queue"
    sim.coze.gate.set()
    for request in requests:
        code, _, text = await request
        assert code == 200, text
    by_author = posts_by_author(sim)
    assert sorted(len(times) for times in by_author.values()) == [3, 3]
    gaps = [b - a for times in by_author.values() for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.3, gaps


async def test_a_daily_cap_caps_and_then_the_limit_error(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(
        discord={"user_tokens": sim.user_tokens[:2]}, accounts={"daily_cap": 1}
    )
    for _ in range(2):
        assert (await chat(bridge))[0] == 200
    body = await status(bridge)
    assert [t["state"] for t in body["tokens"]] == ["capped", "capped"]
    assert all(t["resting_until"] and t["posts_today"] == 1 for t in body["tokens"])
    code, headers, text = await chat(bridge)
    assert code == 429
    assert "daily_cap" in text
    assert int(headers["Retry-After"]) > 0
    assert len(sim.world.prompt_posts) == 2


async def test_past_the_queue_bound_503_and_nothing_posted(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(
        discord={"user_tokens": sim.user_tokens[:1]}, accounts={"max_in_flight": 1, "max_queue": 1}
    )
    sim.coze.gate = asyncio.Event()
    first = asyncio.ensure_future(chat(bridge, "first", stream=True))
    second = asyncio.ensure_future(chat(bridge, "second", stream=True))
    async with asyncio.timeout(10):
        await sim.wait_for(lambda: len(sim.world.prompt_posts) == 1)
    await queue_reaches(bridge, 1)
    threads = len([c for c in sim.world.channels.values() if c.is_thread])
    code, headers, text = await chat(bridge, "third", stream=True)
    assert code == 503
    assert "overloaded" in text
    assert int(headers["Retry-After"]) >= 1
    assert (await status(bridge))["queue"]["full_since"] is not None
    assert len([c for c in sim.world.channels.values() if c.is_thread]) == threads, "no thread either"
    sim.coze.gate.set()
    for request in (first, second):
        assert (await request)[0] == 200
    assert len(sim.world.prompt_posts) == 2
    assert (await status(bridge))["queue"]["full_since"] is None


async def test_least_busy_choice_over_a_skewed_load(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge()
    sim.coze.gate = gate = asyncio.Event()
    held = [asyncio.ensure_future(chat(bridge, f"slow {n}")) for n in range(2)]
    async with asyncio.timeout(10):
        await sim.wait_for(lambda: sim.coze.replying == 2)
    busy = {post.author_id for post in sim.world.prompt_posts}
    sim.coze.gate = None  # new replies come at once; the two held ones still wait
    for n in range(4):
        assert (await chat(bridge, f"quick {n}"))[0] == 200
    quick = [post.author_id for post in sim.world.prompt_posts[2:]]
    assert len(busy) == 2
    assert not busy & set(quick), "the idle token took every new request"
    gate.set()
    for request in held:
        assert (await request)[0] == 200


async def test_a_reload_adds_and_retires_tokens_mid_stream(
    sim: SimulatedDiscord, start_bridge: BridgeFactory, tmp_path: Path
) -> None:
    one, two, three = sim.user_tokens
    bridge: Bridge = await start_bridge(discord={"user_tokens": [one]})
    sim.coze.gate = asyncio.Event()
    streaming = asyncio.ensure_future(chat(bridge, "long", stream=True))
    async with asyncio.timeout(10):
        await sim.wait_for(lambda: sim.coze.replying == 1)
    bridge.backend.reconfigure(sim_settings(sim, tmp_path, discord={"user_tokens": [two, three]}))
    states = {t["id"]: t["state"] for t in (await status(bridge))["tokens"]}
    assert states == {
        fingerprint(two): "healthy",
        fingerprint(three): "healthy",
        fingerprint(one): "retiring",
    }
    sim.coze.gate.set()
    code, _, text = await streaming
    assert code == 200
    assert "[DONE]" in text, "the open stream finished"
    for _ in range(3):
        assert (await chat(bridge))[0] == 200
    authors = [post.author_id for post in sim.world.prompt_posts[1:]]
    assert sim.account(one).id not in authors, "the removed token took no new prompts"
    assert {sim.account(two).id, sim.account(three).id} <= set(authors)
    labels = {t["id"]: t["state"] for t in (await status(bridge))["tokens"]}
    assert fingerprint(one) not in labels, "it left with its last prompt"


async def test_an_admin_disable_survives_a_restart(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge()
    first = fingerprint(sim.user_tokens[0])
    assert bridge.backend.set_token_enabled(first, False).state is TokenState.DISABLED
    await bridge.stop()
    restarted: Bridge = await start_bridge()
    token = next(t for t in (await status(restarted))["tokens"] if t["id"] == first)
    assert (token["state"], token["reason"]) == ("disabled", "disabled by an admin")
    assert token["since"] is not None
    for _ in range(3):
        assert (await chat(restarted))[0] == 200
    assert sim.prompts_by(sim.user_tokens[0]) == []
    assert restarted.backend.set_token_enabled(first, True).state is TokenState.HEALTHY


async def test_periodic_checks_catch_a_revoked_token_and_a_restored_one(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(accounts={"check_hours": 0.0002})  # about 0.7 s
    bad = sim.user_tokens[1]
    sim.revoke_token(bad)

    async def state_of(token: str) -> tuple[str, str | None]:
        entry = next(t for t in (await status(bridge))["tokens"] if t["id"] == fingerprint(token))
        return entry["state"], entry["reason"]

    async with asyncio.timeout(10):
        while (await state_of(bad))[0] != "invalid":  # noqa: ASYNC110
            # The check runs on its own clock and signals nothing: read /v1/status as a monitor would.
            await asyncio.sleep(0.05)  # sleep-ok: polls /v1/status with a deadline, as a monitor does
    assert (await state_of(bad))[1] == "Discord answered 401 to /users/@me"
    assert sim.world.prompt_posts == [], "checks post nothing"
    sim.reinstate_token(bad)
    async with asyncio.timeout(10):
        while (await state_of(bad))[0] != "healthy":  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # sleep-ok: polls /v1/status with a deadline, as a monitor does


async def test_http_status_shows_the_pool(sim: SimulatedDiscord, bridge: Bridge) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{bridge.base_url}/v1/status") as resp:
        body = await resp.json()
    assert {t["max_in_flight"] for t in body["tokens"]} == {64}
    assert body["models"][0]["tokens_available"] == 3
