"""Two reply cores sharing one store and one coordinator hub, on a virtual clock: what bridges
sharing a database agree on, without processes, discord.py or a wall clock."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest

from bot.interface import Finished, StorageUnavailable
from bot.memory_coordinator import MemoryCoordinator, MemoryHub
from bot.memory_store import MemoryStore
from bot.router import ReplyRouter
from bot.token_pool import Pacing
from tests.backend_rig import NO_PACING, NOON, FakeDiscord, Fanout, Rig, make_rig

pytestmark = pytest.mark.looptime

LEASE = 30.0


@dataclass
class Pair:
    a: Rig
    b: Rig
    hub: MemoryHub
    discord: FakeDiscord
    coordinators: dict[str, MemoryCoordinator]


@asynccontextmanager
async def pair_of_bridges(*, pacing: Pacing = NO_PACING, tokens: int = 1) -> AsyncIterator[Pair]:
    loop = asyncio.get_running_loop()
    hub = MemoryHub(lambda: NOON + loop.time(), lease_seconds=LEASE)
    store = MemoryStore()
    routers = [ReplyRouter(), ReplyRouter()]
    discord = FakeDiscord(Fanout(routers))
    coordinators = {name: MemoryCoordinator(hub, name) for name in ("a", "b")}
    async with AsyncExitStack() as stack:
        rigs = [
            await stack.enter_async_context(
                asynccontextmanager(make_rig)(
                    tokens=tokens,
                    pacing=pacing,
                    store=store,
                    coordinator=coordinators[name],
                    router=router,
                    discord=discord,
                )
            )
            for name, router in zip(coordinators, routers, strict=True)
        ]
        for name, rig in zip(coordinators, rigs, strict=True):
            rig.pool.here = name
            rig.backend.start_sharing(store)
        try:
            yield Pair(rigs[0], rigs[1], hub, discord, coordinators)
        finally:
            for coordinator in coordinators.values():
                coordinator.close()


async def test_a_follow_up_on_b_goes_on_in_as_thread() -> None:
    async with pair_of_bridges() as pair:
        first = pair.a.ask("Remember heron")
        events = await pair.a.run(first)
        finished = events[-1]
        assert isinstance(finished, Finished)
        assert finished.settling, "shared: the response ends once the exchange is written"
        follow = pair.b.request(
            ("user", "Remember heron"), ("assistant", finished.content), ("user", "Which word?")
        )
        done = (await pair.b.run(follow))[-1]
        assert isinstance(done, Finished)
        assert done.continued
        prompts = pair.discord.prompts()
        assert prompts[0].channel_id == prompts[1].channel_id
        assert prompts[1].content.endswith("Which word?")


async def test_the_gap_holds_across_both_and_a_rest_on_a_reaches_b() -> None:
    async with pair_of_bridges(pacing=Pacing(max_in_flight=1, min_gap=5.0)) as pair:
        await asyncio.gather(*(rig.run(rig.ask(f"via {n}")) for n in range(3) for rig in (pair.a, pair.b)))
        times = [post.at for post in pair.discord.prompts()]
        assert len(times) == 6
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert min(gaps) >= 5.0, gaps
        token_a, token_b = pair.a.pool.tokens[0], pair.b.pool.tokens[0]
        await pair.b.advance(2)  # a sharing round on the virtual clock
        now = NOON + asyncio.get_running_loop().time()
        assert pair.b.pool.posts_today(token_b, now) == 6, "b counts a's posts too"
        pair.a.backend.set_token_enabled(token_a.fingerprint, False)
        await pair.a.writes.wait()
        await pair.b.advance(2)
        assert token_b.disabled, "an admin's switch on a reaches b"
        status = pair.b.backend.status()
        assert {i.name for i in status.instances} == {"a", "b"}


async def test_a_dead_bridges_conversation_passes_to_b_after_its_lease() -> None:
    async with pair_of_bridges() as pair:
        await pair.a.run(pair.a.ask("Start", conversation="c1"))
        gate = pair.discord.post_gate = asyncio.Event()
        stuck = asyncio.create_task(pair.a.run(pair.a.ask("Mid-reply", conversation="c1")))
        await pair.a.advance(1)
        pair.hub.kill("a")
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
        gate.set()
        pair.discord.post_gate = None
        started = asyncio.get_running_loop().time()
        waiting = asyncio.create_task(pair.b.run(pair.b.ask("After", conversation="c1")))
        await pair.b.advance(LEASE / 2)
        assert not waiting.done(), "a's hold outlives it by its lease"
        await pair.b.advance(LEASE)
        pair.hub.expire()
        events = await waiting
        assert isinstance(events[-1], Finished)
        assert asyncio.get_running_loop().time() - started >= LEASE


async def test_without_the_database_new_requests_are_refused_before_posting() -> None:
    async with pair_of_bridges() as pair:
        pair.hub.cut()
        with pytest.raises(StorageUnavailable):
            await pair.b.run(pair.b.ask("During"))
        assert pair.discord.prompts() == []
        assert not pair.b.backend.status().storage_available
        pair.hub.restore()
        assert isinstance((await pair.b.run(pair.b.ask("After")))[-1], Finished)
