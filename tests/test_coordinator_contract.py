"""One contract for every shared `Coordinator`: each test runs two instances on one shared state,
in memory (`MemoryHub`, a fake clock) and in PostgreSQL (two coordinators on one real database);
then the one-instance `LocalCoordinator`. What only PostgreSQL has: tests/test_postgres_coordinator.py."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator

import pytest

from bot.coordination import LocalCoordinator
from tests.coordinator_rig import (
    FP,
    PASSWORD,
    MemoryPair,
    Pair,
    PostgresPair,
    bounds,
    held_in_turn,
    hold_until_cancelled,
    postgres_pair,
    stopped,
    until_available,
)


@pytest.fixture(params=["memory", "postgresql"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    if request.param == "memory":
        yield MemoryPair()
        return
    async with postgres_pair(request.getfixturevalue("pg_server")) as chosen:
        yield chosen


# Conversations.
async def test_a_hold_excludes_the_other_instance_and_passes_on_release(pair: Pair) -> None:
    log: list[str] = []
    async with pair.a.hold("k"):
        log.append("a in")
        waiter = asyncio.create_task(held_in_turn(pair.b, "k", log))
        await pair.settle(pair.b)  # b has asked, and was refused
        async with pair.b.hold("other"):
            log.append("b holds another")
        log.append("a out")
    await waiter
    assert log == ["a in", "b holds another", "a out", "b in"]


async def test_a_dead_holders_hold_frees_once_its_lease_runs_out(pair: Pair) -> None:
    entered = asyncio.Event()
    holder = asyncio.create_task(hold_until_cancelled(pair.a, "k", entered))
    await entered.wait()
    await pair.kill(pair.a)
    log: list[str] = []
    waiter = asyncio.create_task(held_in_turn(pair.b, "k", log))
    await pair.settle(pair.b)
    assert not waiter.done()
    assert [info.name for info in await pair.b.instances()] == ["a", "b"], "a's lease still runs"
    pair.lapse()
    await waiter
    assert log == ["b in"]
    assert [info.name for info in await pair.b.instances()] == ["b"]
    await stopped(holder)  # the dead process's leftovers change nothing


async def test_a_clean_close_frees_at_once(pair: Pair) -> None:
    entered = asyncio.Event()
    holder = asyncio.create_task(hold_until_cancelled(pair.a, "k", entered))
    await entered.wait()
    assert await pair.a.claim_post(FP, "a1", **bounds(max_in_flight=1)) is None
    assert await pair.a.lead()
    await pair.close(pair.a)
    await held_in_turn(pair.b, "k", [])
    assert await pair.b.claim_post(FP, "b1", **bounds(max_in_flight=1)) is None
    assert await pair.b.lead()
    assert [info.name for info in await pair.b.instances()] == ["b"]
    await stopped(holder)


# Tokens.
async def test_a_claim_holds_the_token_until_posted_then_the_gap_runs(pair: Pair) -> None:
    assert await pair.a.claim_post(FP, "a1", **bounds()) is None
    assert await pair.b.claim_post(FP, "b1", **bounds()) == math.inf, "a is about to post"
    pair.a.posted(FP, "a1", ready_at=105.0, counted=True, day_start=0.0)
    await pair.settle(pair.a)
    assert await pair.b.claim_post(FP, "b1", **bounds(now=101.0)) == 105.0, "only the gap is left"
    assert await pair.b.claim_post(FP, "b1", **bounds(now=105.0)) is None


async def test_the_in_flight_bound_holds_across_instances(pair: Pair) -> None:
    two = bounds(max_in_flight=2)
    assert await pair.a.claim_post(FP, "a1", **two) is None
    pair.a.posted(FP, "a1", ready_at=0.0, counted=True, day_start=0.0)
    await pair.settle(pair.a)
    assert await pair.b.claim_post(FP, "b1", **two) is None
    pair.b.posted(FP, "b1", ready_at=0.0, counted=True, day_start=0.0)
    await pair.settle(pair.b)
    assert await pair.a.claim_post(FP, "a2", **two) == math.inf
    pair.a.release(FP, "a1")
    # As the pool does: look again whenever another instance says something changed.
    while await pair.b.claim_post(FP, "b2", **two) is not None:
        await pair.b.changed()
    assert await pair.a.claim_post(FP, "a2", **two) == math.inf


async def test_a_flight_claiming_again_counts_once(pair: Pair) -> None:
    one = bounds(max_in_flight=1)
    assert await pair.a.claim_post(FP, "a1", **one) is None
    pair.a.posted(FP, "a1", ready_at=0.0, counted=True, day_start=0.0)
    assert await pair.a.claim_post(FP, "a1", **one) is None, "a re-post of the same request"
    pair.a.posted(FP, "a1", ready_at=0.0, counted=True, day_start=0.0)
    await pair.settle(pair.a)
    token = (await pair.b.shared_tokens())[FP]
    assert token.holders == {"a": 1}
    assert token.others_in_flight == 1
    assert token.posts_today == 2
    assert await pair.b.claim_post(FP, "b1", **one) == math.inf


async def test_the_daily_cap_counts_every_instance_and_a_new_day_starts_afresh(pair: Pair) -> None:
    capped = bounds(daily_cap=2, day_start=1000.0)
    for coordinator, flight in ((pair.a, "a1"), (pair.b, "b1")):
        assert await coordinator.claim_post(FP, flight, **capped) is None
        coordinator.posted(FP, flight, ready_at=0.0, counted=True, day_start=1000.0)
        await pair.settle(coordinator)
    assert await pair.a.claim_post(FP, "a2", **capped) == math.inf
    assert await pair.b.claim_post(FP, "b2", **bounds(daily_cap=2, day_start=2000.0)) is None
    pair.b.posted(FP, "b2", ready_at=0.0, counted=True, day_start=2000.0)
    await pair.settle(pair.b)
    token = (await pair.a.shared_tokens())[FP]
    assert (token.day_start, token.posts_today) == (2000.0, 1)
    # An instance still on the old day sees the new day's count, not a cap.
    assert await pair.a.claim_post(FP, "a2", **capped) is None


async def test_posted_and_release_land_in_order_before_a_later_claim(pair: Pair) -> None:
    one = bounds(max_in_flight=1)
    assert await pair.a.claim_post(FP, "a1", **one) is None
    # Neither is awaited: the next claim must still see both.
    pair.a.posted(FP, "a1", ready_at=200.0, counted=True, day_start=0.0)
    pair.a.release(FP, "a1")
    assert await pair.a.claim_post(FP, "a2", **bounds(max_in_flight=1, now=150.0)) == 200.0
    token = (await pair.b.shared_tokens())[FP]
    assert (token.ready_at, token.posts_today, token.claimed, token.others_in_flight) == (200.0, 1, False, 0)
    assert token.holders == {}


async def test_shared_tokens_show_each_instances_flights_and_claims(pair: Pair) -> None:
    assert await pair.a.claim_post(FP, "a1", **bounds()) is None
    pair.a.posted(FP, "a1", ready_at=0.0, counted=True, day_start=0.0)
    await pair.settle(pair.a)
    assert await pair.b.claim_post(FP, "b1", **bounds()) is None
    pair.b.posted(FP, "b1", ready_at=0.0, counted=True, day_start=0.0)
    assert await pair.b.claim_post(FP, "b2", **bounds()) is None  # not posted yet: claimed
    seen_by_a = (await pair.a.shared_tokens())[FP]
    assert seen_by_a.holders == {"a": 1, "b": 2}
    assert seen_by_a.others_in_flight == 2
    assert seen_by_a.claimed
    seen_by_b = (await pair.b.shared_tokens())[FP]
    assert seen_by_b.others_in_flight == 1
    assert not seen_by_b.claimed, "its own claim holds nobody back on b"
    assert await pair.a.claim_post("fp2", "a3", **bounds()) is None
    assert set(await pair.b.shared_tokens()) == {FP, "fp2"}


async def test_changed_wakes_on_the_others_news_not_ones_own(pair: Pair) -> None:
    waiting = asyncio.create_task(pair.b.changed())
    pair.b.announce()
    await pair.settle(pair.b)
    await pair.a.changed()  # delivered to a, so very likely to b too
    assert not waiting.done()
    pair.a.announce()
    await waiting


# Instances and the lead.
async def test_instances_lists_both_oldest_first(pair: Pair) -> None:
    first = await pair.a.instances()
    assert [(info.name, info.leader) for info in first] == [("a", False), ("b", False)]
    assert first[0].started <= first[1].started
    assert all(info.started <= info.seen for info in first)
    assert await pair.b.lead()
    assert [(info.name, info.leader) for info in await pair.a.instances()] == [("a", False), ("b", True)]


async def test_the_lead_is_exclusive_and_passes_when_its_holder_dies(pair: Pair) -> None:
    assert await pair.a.lead()
    assert not await pair.b.lead()
    assert await pair.a.lead(), "the leader keeps it"
    await pair.kill(pair.a)
    assert not await pair.b.lead(), "a's lease still runs"
    pair.lapse()
    while not await pair.b.lead():
        await pair.b.changed()  # b's heartbeat tells it when a's lease ran out


# The database away.
async def test_while_the_database_is_away_each_instance_goes_alone_then_catches_up(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    entered = asyncio.Event()
    holder = asyncio.create_task(hold_until_cancelled(pair.a, "k", entered))
    await entered.wait()
    assert await pair.a.claim_post(FP, "a1", **bounds(max_in_flight=1)) is None
    assert await pair.a.lead()
    tokens, instances = await pair.b.shared_tokens(), await pair.b.instances()
    assert pair.a.available
    assert pair.b.available

    await pair.cut()
    await until_available(pair.a, False)
    await until_available(pair.b, False)
    await held_in_turn(pair.b, "k", [])  # held locally, so that open streams finish
    assert await pair.b.claim_post(FP, "b1", **bounds(max_in_flight=1)) is None, "bounds hold per instance"
    assert await pair.b.shared_tokens() == tokens, "the last known view"
    assert await pair.b.instances() == instances
    assert not await pair.a.lead(), "no housekeeping while nobody can agree on it"
    pair.a.posted(FP, "a1", ready_at=500.0, counted=True, day_start=0.0)  # kept, and retried

    await pair.restore()
    await until_available(pair.a, True)
    await until_available(pair.b, True)
    await pair.settle(pair.a)
    token = (await pair.b.shared_tokens())[FP]
    assert (token.ready_at, token.posts_today, token.claimed) == (500.0, 1, False)
    waiting = asyncio.create_task(pair.b.changed())
    pair.a.announce()
    await waiting  # b listens again
    await stopped(holder)
    if isinstance(pair, PostgresPair):
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "unreachable" in r.message]
        backs = [r for r in caplog.records if "is back" in r.message]
        assert len(warnings) == 2, "one for each instance"
        assert len(backs) == 2
        assert PASSWORD not in caplog.text


# One bridge alone.
async def test_a_local_coordinator_agrees_with_itself() -> None:
    local = LocalCoordinator("solo")
    local.started(5.0)
    assert (local.shared, local.available) == (False, True)
    async with local.hold("k"), local.hold("k"):
        pass  # nothing across instances: bot.conversations keeps one instance's turns
    assert await local.claim_post(FP, "f", **bounds(max_in_flight=0)) is None
    local.posted(FP, "f", ready_at=9.0, counted=True, day_start=0.0)
    local.release(FP, "f")
    local.announce()
    assert await local.shared_tokens() == {}
    assert await local.lead()
    [info] = await local.instances()
    assert (info.name, info.started, info.leader) == ("solo", 5.0, True)
    waiting = asyncio.create_task(local.changed())
    await asyncio.sleep(0)
    assert not waiting.done(), "nobody else ever changes anything"
    await stopped(waiting)
