"""Two bridge processes, each with its own listener bot on one simulated Discord, sharing one real
PostgreSQL (issue 15): conversations, tokens, locks and faults across instances."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.instances import Instance
from simdiscord import SimulatedDiscord
from tests.instances_rig import LEASE_SECONDS, bridge_instances, stream_chat
from tests.pg_server import PrivatePg

# Polls of a child process's HTTP answers: it has no other signal.
POLL_SECONDS = 0.05


async def get_json(instance: Instance, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        http.get(instance.base_url + path, headers=instance.headers) as resp,
    ):
        return resp.status, await resp.json()


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(POLL_SECONDS)  # sleep-ok: polls a child process's answers


async def chat(
    instance: Instance, content: str, *, conversation: str | None = None, stream: bool = False
) -> tuple[int, dict[str, Any]]:
    """A plain (or streamed, then read whole) chat completion; status and body (or last chunk)."""
    headers = dict(instance.headers)
    if conversation is not None:
        headers["X-Conversation-Id"] = conversation
    body = {"model": "coze", "stream": stream, "messages": [{"role": "user", "content": content}]}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        http.post(instance.base_url + "/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        if not stream or resp.status != 200:
            return resp.status, await resp.json()
        raw = (await resp.read()).decode()
    assert raw.rstrip().endswith("data: [DONE]")
    frames = [json.loads(f[6:]) for f in raw.split("\n\n") if f.startswith("data: {")]
    return 200, frames[-1]


def threads_of(sim: SimulatedDiscord) -> list[int]:
    return [prompt.channel_id for prompt in sim.prompts_received]


async def test_a_conversation_started_on_a_goes_on_in_its_thread_on_b(
    sim: SimulatedDiscord, private_pg: PrivatePg, tmp_path: Path
) -> None:
    async with bridge_instances(sim, private_pg.url, tmp_path) as bridges:
        a, b = bridges
        first = [{"role": "user", "content": "Remember the word heron."}]
        answer = await stream_chat(a, first)
        # At once, as a client reading [DONE] and asking again would: the exchange is there.
        follow = [
            *first,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "Which word?"},
        ]
        await stream_chat(b, follow)
        named_a, _ = await chat(a, "Pinned, on a", conversation="pinned-1")
        named_b, _ = await chat(b, "Pinned, on b", conversation="pinned-1")
        assert (named_a, named_b) == (200, 200)
        bridges.assert_no_secrets()
    threads = threads_of(sim)
    assert len(threads) == 4
    assert threads[0] == threads[1], "b posted the follow-up in a's thread"
    assert threads[2] == threads[3], "b went on in the conversation a pinned"
    assert threads[0] != threads[2]
    # Only the new turn went to the old thread: Coze keeps its context.
    assert sim.prompts_received[1].content.endswith("Which word?")
    assert "heron" not in sim.prompts_received[1].content


async def test_a_token_rested_by_a_is_skipped_by_b(
    sim: SimulatedDiscord, private_pg: PrivatePg, tmp_path: Path
) -> None:
    spent = sim.user_tokens[0]
    sim.exhaust(spent)
    async with bridge_instances(sim, private_pg.url, tmp_path) as bridges:
        a, b = bridges

        async def rested_on_b() -> bool:
            _, status = await get_json(b, "/v1/status")
            return any(t["state"] == "resting" for t in status["tokens"])

        # a tries tokens until one answers: the spent one, if it draws it, rests.
        for attempt in range(8):
            await stream_chat(a, f"Hello {attempt}")
            if sim.prompts_by(spent):
                break
        assert sim.prompts_by(spent), "a drew the spent token within eight requests"
        await eventually(rested_on_b)
        before = len(sim.prompts_by(spent))
        await asyncio.gather(*(stream_chat(b, f"From b {n}") for n in range(6)))
        assert len(sim.prompts_by(spent)) == before, "b never posted with the token a rested"
        _, status = await get_json(b, "/v1/status")
        resting = [t for t in status["tokens"] if t["state"] == "resting"]
        assert len(resting) == 1
        assert resting[0]["resting_models"]


async def test_two_instances_never_post_for_one_conversation_at_once(
    sim: SimulatedDiscord, private_pg: PrivatePg, tmp_path: Path
) -> None:
    async with bridge_instances(sim, private_pg.url, tmp_path) as bridges:
        a, b = bridges
        assert (await chat(a, "Start", conversation="shared-7"))[0] == 200
        gate = sim.coze.gate = asyncio.Event()
        follow_ups = [
            asyncio.create_task(chat(instance, f"Turn {n} via {instance.name}", conversation="shared-7"))
            for n in range(3)
            for instance in (a, b)
        ]
        async with asyncio.timeout(20):
            await sim.wait_for(lambda: len(sim.prompts_received) == 2)
        # One follow-up is in Coze's hands; the other five wait for it, on both instances.
        gate.set()
        results = await asyncio.gather(*follow_ups)
        assert [status for status, _ in results] == [200] * 6
    prompts = sim.prompts_received
    assert len({p.channel_id for p in prompts}) == 1
    ended = sim.coze.reply_ended
    posted = {post.message_id: post.at for post in sim.world.prompt_posts}
    spans = sorted((posted[p.message_id], ended[p.message_id]) for p in prompts)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, "a prompt went out while the conversation's previous one was unanswered"


async def test_a_tokens_gap_and_in_flight_bound_hold_across_both(
    sim: SimulatedDiscord, private_pg: PrivatePg, tmp_path: Path
) -> None:
    gap = 0.4
    accounts = {"min_gap_seconds": gap, "jitter_seconds": 0.0, "max_in_flight": 1}
    tokens = sim.user_tokens[:2]
    discord = {"user_tokens": tokens}
    async with bridge_instances(
        sim, private_pg.url, tmp_path, settings={"accounts": accounts, "discord": discord}
    ) as bridges:
        a, b = bridges
        gate = sim.coze.gate = asyncio.Event()
        load = [
            asyncio.create_task(chat(instance, f"Load {n} via {instance.name}"))
            for n in range(5)
            for instance in (a, b)
        ]

        async def queued_on_both() -> bool:
            lengths = [(await get_json(i, "/v1/status"))[1]["queue"]["length"] for i in (a, b)]
            # Two posts hold the two tokens; the other eight wait, some on each instance.
            return sum(lengths) >= 8 - 2 and all(lengths)

        async with asyncio.timeout(20):
            await sim.wait_for(lambda: len(sim.prompts_received) == 2)
        await eventually(queued_on_both)
        assert len(sim.prompts_received) == 2, "max_in_flight 1 per token, across both instances"

        async def whole_pool_on_both() -> bool:
            # Either instance's status shows the whole pool: who holds each token, by name.
            for instance in (a, b):
                _, status = await get_json(instance, "/v1/status")
                holders = [(name, n) for t in status["tokens"] for name, n in t["holders"].items()]
                assert {name for name, _ in holders} <= {"a", "b"}
                if sum(n for _, n in holders) < 2:
                    return False
            return True

        await eventually(whole_pool_on_both)
        gate.set()
        results = await asyncio.gather(*load)
        assert [status for status, _ in results] == [200] * 10
    ended = sim.coze.reply_ended
    for token in tokens:
        author = sim.account(token).id
        posts = [p for p in sim.world.prompt_posts if p.author_id == author]
        assert len(posts) >= 3, "both tokens took a share of the load"
        for before, after in itertools.pairwise(posts):
            assert after.at - before.at >= gap - 0.01, "the gap holds across instances"
            assert after.at >= ended[before.message_id], "one prompt in flight per token"


async def test_killing_a_frees_its_conversation_and_token_for_b(
    sim: SimulatedDiscord, private_pg: PrivatePg, tmp_path: Path
) -> None:
    accounts = {"max_in_flight": 1}
    discord = {"user_tokens": sim.user_tokens[:1]}
    async with bridge_instances(
        sim, private_pg.url, tmp_path, settings={"accounts": accounts, "discord": discord}
    ) as bridges:
        a, b = bridges
        assert (await chat(a, "Start", conversation="kill-9"))[0] == 200
        gate = sim.coze.gate = asyncio.Event()
        stuck = asyncio.create_task(chat(a, "Mid-reply when a dies", conversation="kill-9", stream=True))
        async with asyncio.timeout(20):
            await sim.wait_for(lambda: len(sim.prompts_received) == 2)
        await a.kill()
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
        gate.set()
        # b waits for a's conversation hold and a's post in flight with the only token: both
        # outlive a by its lease (its last heartbeat came at most a third of one before).
        status, body = await chat(b, "After a died", conversation="kill-9")
        waited = loop.time() - killed_at
        assert status == 200, body
        assert LEASE_SECONDS / 2 <= waited <= LEASE_SECONDS * 3, f"b waited {waited:.1f}s"

        async def only_b_lives() -> bool:
            _, overview = await get_json(b, "/v1/status")
            return [i["name"] for i in overview["instances"]] == ["b"]

        await eventually(only_b_lives)
    assert len({p.channel_id for p in sim.prompts_received}) == 1


async def test_postgresql_stopped_and_started_while_b_serves(
    sim: SimulatedDiscord, private_pg: PrivatePg, tmp_path: Path
) -> None:
    async with bridge_instances(sim, private_pg.url, tmp_path) as bridges:
        _, b = bridges
        assert (await chat(b, "Before"))[0] == 200
        gate = sim.coze.gate = asyncio.Event()
        open_stream = asyncio.create_task(chat(b, "Across the outage", stream=True))
        async with asyncio.timeout(20):
            await sim.wait_for(lambda: len(sim.prompts_received) == 2)
        await private_pg.stop()

        async def unready() -> bool:
            status, body = await get_json(b, "/readyz")
            return status == 503 and body.get("reason") == "storage_unavailable"

        await eventually(unready)
        status, body = await chat(b, "During")
        assert status == 503
        assert body["error"]["code"] == "storage_unavailable"
        assert len(sim.prompts_received) == 2, "nothing was posted for a refused request"
        gate.set()
        status, last = await open_stream
        assert status == 200
        assert last["choices"][0]["finish_reason"] == "stop"
        await private_pg.start()

        async def ready() -> bool:
            return (await get_json(b, "/readyz"))[0] == 200

        await eventually(ready, within=30)
        assert (await chat(b, "After"))[0] == 200
        bridges.assert_no_secrets()
