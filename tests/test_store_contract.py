"""One contract for every `Store`: each test runs against SQLite, PostgreSQL and memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.memory_store import MemoryStore
from bot.postgres_store import open_postgres_store
from bot.sqlite_store import open_sqlite_store
from bot.store import Store, StoredConversation, StoredToken
from tests.pg_server import PgServer, database


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


class PostgresBacking(Backing):
    """A database of its own on the session's server, dropped when the test ends."""

    def __init__(self, server: PgServer) -> None:
        self._server = server
        self._database = contextlib.AsyncExitStack()  # outlives every reopen
        self._open = contextlib.AsyncExitStack()
        self._url: str | None = None

    async def reopen(self) -> Store:
        await self._open.aclose()
        self._open = contextlib.AsyncExitStack()
        if self._url is None:
            self._url = self._server.url(await self._database.enter_async_context(database(self._server)))
        store: Store = await self._open.enter_async_context(open_postgres_store(self._url))
        self.store = store
        return store

    async def close(self) -> None:
        await self._open.aclose()
        await self._database.aclose()


class MemoryBacking(Backing):
    def __init__(self) -> None:
        store: Store = MemoryStore()
        self.store = store

    async def reopen(self) -> Store:
        return self.store  # memory lives as long as the process, which a reopen does not end

    async def close(self) -> None:
        await self.store.drain()


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
async def backing(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backing]:
    chosen: Backing
    if request.param == "sqlite":
        chosen = SqliteBacking(tmp_path / "bridge.db")
    elif request.param == "postgresql":
        chosen = PostgresBacking(request.getfixturevalue("pg_server"))
    else:
        chosen = MemoryBacking()
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


# Conversations as their callers list them.
def listed(
    id: str, thread_id: int, *, created: float, last_used: float, turns: int, pinned: bool = False
) -> StoredConversation:
    return StoredConversation(id, thread_id, "coze", created, last_used, turns, pinned=pinned)


async def test_a_caller_lists_its_conversations_with_their_latest_key_and_turns(store: Store) -> None:
    await store.add_thread(1, "coze", now=10.0)
    await store.remember("h:first", 1, 11.0, "alice")
    await store.remember("h:second", 1, 12.0, "alice")
    assert await store.conversations("alice") == [
        listed("h:second", 1, created=10.0, last_used=12.0, turns=2)
    ]
    assert await store.conversations("bob") == []


async def test_a_pinned_conversation_is_listed_by_the_id_pinned(store: Store) -> None:
    await store.add_thread(1, "coze", now=10.0)
    await store.remember("n:digest", 1, 11.0, "alice", "work")
    await store.remember("n:digest", 1, 12.0, "alice", "work")
    assert await store.conversations("alice") == [
        listed("work", 1, created=10.0, last_used=12.0, turns=2, pinned=True)
    ]


async def test_conversations_come_most_recently_used_first(store: Store) -> None:
    for thread in (1, 2, 3):
        await store.add_thread(thread, "coze", now=float(thread))
    await store.remember("h:a", 1, 30.0, "alice")
    await store.remember("h:b", 2, 20.0, "alice")
    await store.remember("h:c", 3, 30.0, "alice")  # a tie: the newer thread first
    assert [c.thread_id for c in await store.conversations("alice")] == [3, 1, 2]
    await store.remember("h:b2", 2, 40.0, "alice")
    assert [c.id for c in await store.conversations("alice")] == ["h:b2", "h:c", "h:a"]


async def test_the_latest_key_is_the_last_remembered_even_at_the_same_time(store: Store) -> None:
    await store.add_thread(1, "coze", now=10.0)
    await store.remember("h:a", 1, 11.0, "alice")
    await store.remember("h:b", 1, 11.0, "alice")
    assert [c.id for c in await store.conversations("alice")] == ["h:b"]
    await store.remember("h:a", 1, 11.0, "alice")  # remembered again: the latest once more
    assert [c.id for c in await store.conversations("alice")] == ["h:a"]


async def test_threads_with_no_caller_or_no_conversation_left_are_listed_to_nobody(store: Store) -> None:
    await store.add_thread(1, "coze", now=10.0)  # no exchange finished in it
    await store.add_thread(2, "coze", now=10.0)
    await store.remember("h:nobody", 2, 11.0)  # as before callers were recorded
    await store.add_thread(3, "coze", now=10.0)
    await store.add_thread(4, "coze", now=10.0)
    await store.remember("h:moved", 3, 12.0, "alice")
    await store.remember("h:moved", 4, 13.0, "alice")  # thread 3 holds no conversation any more
    assert [c.thread_id for c in await store.conversations("alice")] == [4]
    assert await store.conversations("") == []
    assert await store.find_listed("alice", "h:nobody") == []


async def test_forgetting_or_restarting_a_thread_takes_it_off_the_list(store: Store) -> None:
    await store.add_thread(1, "coze", now=10.0)
    await store.add_thread(2, "coze", now=10.0)
    await store.remember("h:a", 1, 11.0, "alice")
    await store.remember("h:b", 2, 12.0, "alice", "pinned")
    await store.forget_thread(1)
    await store.add_thread(2, "coze", now=20.0)
    assert await store.conversations("alice") == []
    await store.remember("h:c", 2, 21.0, "bob")
    assert await store.conversations("bob") == [listed("h:c", 2, created=20.0, last_used=21.0, turns=1)]


async def test_an_id_names_only_its_callers_conversation(store: Store) -> None:
    await store.add_thread(1, "coze", now=10.0)
    await store.add_thread(2, "coze", now=10.0)
    await store.add_thread(3, "coze", now=10.0)
    await store.remember("h:old", 1, 11.0, "alice")
    await store.remember("h:new", 1, 12.0, "alice")
    await store.remember("n:digest", 2, 13.0, "alice", "work")
    await store.remember("h:bobs", 3, 14.0, "bob")
    alices, pinned = (
        listed("h:new", 1, created=10.0, last_used=12.0, turns=2),
        listed("work", 2, created=10.0, last_used=13.0, turns=1, pinned=True),
    )
    assert await store.find_listed("alice", "h:new") == [alices]
    assert await store.find_listed("alice", "h:old") == [alices], "an earlier key names it too"
    assert await store.find_listed("alice", "work") == [pinned]
    assert await store.find_listed("alice", "n:digest") == [], "a pinned one's key is no id of it"
    assert await store.find_listed("alice", "h:bobs") == [], "another caller's is none"
    assert await store.find_listed("bob", "work") == []
    assert await store.find_listed("alice", "nothing") == []


async def test_a_pinned_id_that_looks_like_a_key_names_only_the_pinned_one(store: Store) -> None:
    await store.add_thread(1, "coze", now=10.0)
    await store.add_thread(2, "coze", now=10.0)
    await store.remember("n:digest", 1, 11.0, "alice", "h:key")
    await store.remember("h:other", 2, 12.0, "alice")
    assert [c.thread_id for c in await store.find_listed("alice", "h:key")] == [1]


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
    await store.remember("a", 1, 30.0, "alice", "work")
    await store.save_token(token)
    await store.rest_token("fp1", 7, until=100.0)
    await store.rest_model(8, until=200.0)

    reopened = await backing.reopen()
    assert await reopened.idle_threads(before=100.0) == [2, 1]
    assert await reopened.find_conversation("a") == 1
    assert await reopened.conversations("alice") == [
        listed("work", 1, created=10.0, last_used=30.0, turns=1, pinned=True)
    ]
    assert await reopened.tokens() == {"fp1": token}
    assert await reopened.token_rests() == {("fp1", 7): 100.0}
    assert await reopened.model_rests() == {8: 200.0}
