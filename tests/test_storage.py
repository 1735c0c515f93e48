"""SQLite storage: versioned migrations, and an older database file opening after an upgrade."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.conversations import history_key, named_key, new_turns
from bot.interface import ChatTurn
from bot.storage import SCHEMA_VERSION, TokenRow, open_store


async def test_a_new_database_is_created_with_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "bridge.db"
    async with open_store(path) as store:
        assert await store.schema_version() == SCHEMA_VERSION
    assert path.exists()


async def test_an_old_database_opens_after_an_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    async with open_store(path, schema=1) as old:
        assert await old.schema_version() == 1
        await old.add_thread(111, "coze", now=1000.0)
        await old.remember("h:abc", 111, now=1000.0)
        await old.save_token(TokenRow("fp1", invalid=True, day_start=0.0, requests_today=3))
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "model_rests" not in tables

    async with open_store(path) as upgraded:
        assert await upgraded.schema_version() == SCHEMA_VERSION
        assert await upgraded.find_conversation("h:abc") == 111
        assert (await upgraded.tokens())["fp1"].invalid
        await upgraded.rest_model(7, until=2000.0)
        assert await upgraded.model_rests() == {7: 2000.0}


async def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    async with open_store(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(RuntimeError, match="newer"):
        async with open_store(path):
            pass


async def test_forgetting_a_thread_forgets_its_conversations(tmp_path: Path) -> None:
    async with open_store(tmp_path / "bridge.db") as store:
        await store.add_thread(1, "coze", now=10.0)
        await store.add_thread(2, "coze", now=10.0)
        await store.remember("a", 1, now=10.0)
        await store.remember("b", 2, now=50.0)  # remembering marks the thread used
        assert await store.idle_threads(before=20.0) == [1]
        await store.forget_thread(1)
        assert await store.find_conversation("a") is None
        assert await store.find_conversation("b") == 2
        assert await store.count("conversations") == 1


def test_history_keys_ignore_whitespace_and_name_roles_alike() -> None:
    turns = [ChatTurn("system", "Be brief."), ChatTurn("user", "Hi")]
    same = [ChatTurn("developer", "Be brief.\n"), ChatTurn("user", "  Hi")]
    assert history_key("coze", turns) == history_key("coze", same)
    assert history_key("coze", turns) != history_key("other", turns)
    assert history_key("coze", turns) != history_key("coze", [*turns, ChatTurn("user", "Hi")])
    assert named_key("coze", "x") != named_key("coze", "y")


def test_new_turns_begin_after_the_last_assistant_reply() -> None:
    assert new_turns([ChatTurn("user", "a")]) == 0
    turns = [ChatTurn("user", "a"), ChatTurn("assistant", "b"), ChatTurn("user", "c"), ChatTurn("user", "d")]
    assert new_turns(turns) == 2


async def test_writes_that_arrive_together_share_a_commit(tmp_path: Path) -> None:
    import asyncio

    async with open_store(tmp_path / "bridge.db") as store:
        await asyncio.gather(*(store.add_thread(n, "coze", now=1.0) for n in range(1, 51)))
        await asyncio.gather(*(store.remember(f"h:{n}", n, now=2.0) for n in range(1, 51)))
        assert 2 <= store.commits < 10
        assert await store.count("conversations") == 50
        assert await store.idle_threads(before=1.5) == []  # every thread was marked used at 2.0


async def test_a_failed_write_spoils_only_itself(tmp_path: Path) -> None:
    import asyncio

    async with open_store(tmp_path / "bridge.db") as store:
        await store.add_thread(1, "coze", now=1.0)
        results = await asyncio.gather(
            store.remember("h:good", 1, now=2.0),
            store.remember("h:orphan", 999, now=2.0),  # no such thread: a foreign-key failure
            store.rest_model(7, until=3.0),
            return_exceptions=True,
        )
        assert results[0] is None
        assert isinstance(results[1], sqlite3.IntegrityError)
        assert results[2] is None
        assert await store.find_conversation("h:good") == 1
        assert await store.find_conversation("h:orphan") is None
        assert await store.model_rests() == {7: 3.0}


async def test_a_write_whose_caller_gave_up_is_still_committed(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "bridge.db"
    async with open_store(path) as store:
        await store.add_thread(1, "coze", now=1.0)
        writer = asyncio.ensure_future(store.remember("h:late", 1, now=2.0))
        await asyncio.sleep(0)  # let the write queue; sleep-ok: one turn of the loop, not a wait
        writer.cancel()
    async with open_store(path) as reopened:
        assert await reopened.find_conversation("h:late") == 1
