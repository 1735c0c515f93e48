"""One contract for every `Store`: each test runs against SQLite and against memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.memory_store import MemoryStore
from bot.sqlite_store import open_sqlite_store
from bot.store import Store, StoredToken


class Backing:
    """A store under test, and what a restart does to it."""

    store: Store

    async def reopen(self) -> Store:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SqliteBacking(Backing):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._open = contextlib.AsyncExitStack()

    async def reopen(self) -> Store:
        await self.close()
        self._open = contextlib.AsyncExitStack()
        # The typed assignment is mypy's proof that SqliteStore meets the Protocol.
        store: Store = await self._open.enter_async_context(open_sqlite_store(self._path))
        self.store = store
        return store

    async def close(self) -> None:
        await self._open.aclose()


class MemoryBacking(Backing):
    def __init__(self) -> None:
        store: Store = MemoryStore()
        self.store = store

    async def reopen(self) -> Store:
        return self.store  # memory lives as long as the process, which a reopen does not end

    async def close(self) -> None:
        await self.store.drain()


@pytest.fixture(params=["sqlite", "memory"])
async def backing(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backing]:
    chosen: Backing = SqliteBacking(tmp_path / "bridge.db") if request.param == "sqlite" else MemoryBacking()
    await chosen.reopen()
    yield chosen
    await chosen.close()


@pytest.fixture
def store(backing: Backing) -> Store:
    return backing.store


# Threads.
async def test_a_thread_is_idle_only_if_last_used_strictly_before_the_bound(store: Store) -> None:
    await store.add_thread(1, "coze", now=10.0)
    assert await store.idle_threads(before=10.0) == []
    assert await store.idle_threads(before=10.5) == [1]


async def test_idle_threads_come_oldest_first(store: Store) -> None:
    # Neither the ids nor the order of adding match the order of use.
    await store.add_thread(3, "coze", now=30.0)
    await store.add_thread(1, "coze", now=20.0)
    await store.add_thread(2, "other", now=10.0)
    assert await store.idle_threads(before=100.0) == [2, 1, 3]
    assert await store.idle_threads(before=25.0) == [2, 1]


async def test_remembering_marks_the_thread_used(store: Store) -> None:
    await store.add_thread(1, "coze", now=10.0)
    await store.add_thread(2, "coze", now=20.0)
    await store.remember("a", 1, now=30.0)
    assert await store.idle_threads(before=25.0) == [2]
    assert await store.idle_threads(before=100.0) == [2, 1]


async def test_adding_a_known_thread_starts_it_afresh(store: Store) -> None:
    await store.add_thread(1, "coze", now=10.0)
    await store.remember("a", 1, now=20.0)
    await store.add_thread(1, "coze", now=5.0)
    assert await store.find_conversation("a") is None
    assert await store.idle_threads(before=6.0) == [1]


async def test_forgetting_a_thread_forgets_its_conversations_only(store: Store) -> None:
    await store.add_thread(1, "coze", now=10.0)
    await store.add_thread(2, "coze", now=10.0)
    await store.remember("a", 1, now=11.0)
    await store.remember("b", 1, now=12.0)
    await store.remember("c", 2, now=13.0)
    await store.forget_thread(1)
    assert await store.find_conversation("a") is None
    assert await store.find_conversation("b") is None
    assert await store.find_conversation("c") == 2
    assert await store.idle_threads(before=100.0) == [2]
    await store.forget_thread(1)  # already gone: no error
    await store.forget_thread(404)


# Conversations.
async def test_an_unknown_conversation_is_not_found(store: Store) -> None:
    assert await store.find_conversation("h:nothing") is None


async def test_remembering_again_replaces_the_mapping(store: Store) -> None:
    await store.add_thread(1, "coze", now=10.0)
    await store.add_thread(2, "coze", now=10.0)
    await store.remember("a", 1, now=11.0)
    await store.remember("a", 2, now=12.0)
    assert await store.find_conversation("a") == 2
    await store.forget_thread(1)  # the old thread no longer holds the conversation
    assert await store.find_conversation("a") == 2


async def test_remembering_in_an_unknown_thread_stores_nothing(store: Store) -> None:
    await store.add_thread(1, "coze", now=10.0)
    await store.add_thread(2, "coze", now=10.0)
    await store.remember("kept", 2, now=11.0)
    await store.forget_thread(1)  # as housekeeping might, while a reply was still being remembered

    await store.remember("new", 1, now=20.0)
    await store.remember("kept", 1, now=20.0)
    await store.remember("never", 404, now=20.0)

    assert await store.find_conversation("new") is None
    assert await store.find_conversation("kept") == 2  # not replaced either
    assert await store.find_conversation("never") is None
    assert await store.idle_threads(before=100.0) == [2]  # no thread was brought back


# Tokens.
async def test_saving_a_token_inserts_or_replaces(store: Store) -> None:
    assert await store.tokens() == {}
    first = StoredToken("fp1", invalid=False, day_start=1000.5, requests_today=3)
    second = StoredToken("fp2", invalid=True, day_start=0.0, requests_today=0)
    await store.save_token(first)
    await store.save_token(second)
    replaced = StoredToken("fp1", invalid=True, day_start=2000.25, requests_today=7)
    await store.save_token(replaced)
    tokens = await store.tokens()
    assert tokens == {"fp1": replaced, "fp2": second}
    tokens.clear()  # a read hands out a copy
    assert len(await store.tokens()) == 2


async def test_a_token_keeps_why_it_is_invalid_or_disabled(backing: Backing) -> None:
    refused = StoredToken(
        "fp1",
        invalid=True,
        day_start=0.0,
        requests_today=0,
        invalid_reason="Discord answered 401",
        invalid_since=7.5,
    )
    turned_off = StoredToken(
        "fp2", invalid=False, day_start=0.0, requests_today=2, disabled=True, disabled_since=9.0
    )
    await backing.store.save_token(refused)
    await backing.store.save_token(turned_off)
    assert await (await backing.reopen()).tokens() == {"fp1": refused, "fp2": turned_off}
    back_on = StoredToken("fp2", invalid=False, day_start=0.0, requests_today=2)
    await backing.store.save_token(back_on)
    assert (await backing.store.tokens())["fp2"] == back_on


# Rests.
async def test_token_rests_round_trip_and_replace(store: Store) -> None:
    assert await store.token_rests() == {}
    await store.rest_token("fp1", 7, until=100.5)
    await store.rest_token("fp1", 8, until=200.0)
    await store.rest_token("fp2", 7, until=300.0)
    await store.rest_token("fp1", 7, until=400.0)
    assert await store.token_rests() == {("fp1", 7): 400.0, ("fp1", 8): 200.0, ("fp2", 7): 300.0}


async def test_model_rests_round_trip_and_replace(store: Store) -> None:
    assert await store.model_rests() == {}
    await store.rest_model(7, until=100.5)
    await store.rest_model(8, until=200.0)
    await store.rest_model(7, until=50.0)  # a rest can also be shortened
    assert await store.model_rests() == {7: 50.0, 8: 200.0}


# Durability.
async def test_drain_waits_for_every_write_already_started(backing: Backing) -> None:
    store = backing.store
    started = [asyncio.Event() for _ in range(20)]

    async def write(n: int) -> None:
        started[n].set()  # a write is under way before its first pause, so before the test resumes
        await store.rest_model(n, until=float(n))

    writers = [asyncio.create_task(write(n)) for n in range(20)]
    for event in started:
        await event.wait()
    await store.drain()
    assert all(writer.done() and writer.exception() is None for writer in writers)
    expected = {n: float(n) for n in range(20)}
    assert await store.model_rests() == expected
    assert await (await backing.reopen()).model_rests() == expected


async def test_everything_survives_a_reopen(backing: Backing) -> None:
    store = backing.store
    token = StoredToken("fp1", invalid=True, day_start=1000.5, requests_today=3)
    await store.add_thread(1, "coze", now=10.0)
    await store.add_thread(2, "coze", now=20.0)
    await store.remember("a", 1, now=30.0)
    await store.save_token(token)
    await store.rest_token("fp1", 7, until=100.0)
    await store.rest_model(8, until=200.0)

    reopened = await backing.reopen()
    assert await reopened.idle_threads(before=100.0) == [2, 1]
    assert await reopened.find_conversation("a") == 1
    assert await reopened.tokens() == {"fp1": token}
    assert await reopened.token_rests() == {("fp1", 7): 100.0}
    assert await reopened.model_rests() == {8: 200.0}
