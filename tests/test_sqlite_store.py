"""What only the SQLite store has: migrations, shared commits, failures kept to their own write."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bot.interface import StartupError
from bot.sqlite_store import SCHEMA_VERSION, open_sqlite_store
from bot.store import StoredConversation, StoredToken


async def test_a_new_database_is_created_with_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "bridge.db"
    async with open_sqlite_store(path) as store:
        assert await store.schema_version() == SCHEMA_VERSION
    assert path.exists()


async def test_an_old_database_opens_after_an_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    async with open_sqlite_store(path, schema=1) as old:
        assert await old.schema_version() == 1
    with sqlite3.connect(path) as db:
        # Rows as version 1 wrote them (today's store writes columns version 1 lacks).
        db.execute("INSERT INTO threads VALUES (111, 'coze', 1000.0, 1000.0)")
        db.execute("INSERT INTO conversations VALUES ('h:abc', 111, 1000.0)")
        db.execute("INSERT INTO tokens VALUES ('fp1', 1, 0.0, 3)")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "model_rests" not in tables

    async with open_sqlite_store(path) as upgraded:
        assert await upgraded.schema_version() == SCHEMA_VERSION
        assert await upgraded.find_conversation("h:abc") == 111
        assert await upgraded.find_listed("", "h:abc") == [], "a thread from before is nobody's"
        assert (await upgraded.tokens())["fp1"] == StoredToken(
            "fp1", invalid=True, day_start=0.0, requests_today=3
        )
        await upgraded.rest_model(7, until=2000.0)
        assert await upgraded.model_rests() == {7: 2000.0}
        disabled = StoredToken("fp1", True, 0.0, 3, invalid_reason="401", disabled=True, disabled_since=5.0)
        await upgraded.save_token(disabled)
        assert (await upgraded.tokens())["fp1"] == disabled


async def test_threads_from_before_callers_become_theirs_at_their_next_exchange(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    async with open_sqlite_store(path, schema=3) as old:
        await old.add_thread(111, "coze", now=1000.0)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO conversations VALUES ('h:abc', 111, 1000.0)")  # as version 3 wrote it

    async with open_sqlite_store(path) as upgraded:
        assert await upgraded.schema_version() == SCHEMA_VERSION == 4
        assert await upgraded.find_conversation("h:abc") == 111
        assert await upgraded.conversations("alice") == []
        await upgraded.remember("h:def", 111, 1100.0, "alice")
        assert await upgraded.conversations("alice") == [
            StoredConversation("h:def", 111, "coze", 1000.0, 1100.0, turns=1, pinned=False)
        ]


async def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    async with open_sqlite_store(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StartupError, match="newer"):
        async with open_sqlite_store(path):
            pass


async def test_writes_that_arrive_together_share_a_commit(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "bridge.db") as store:
        await asyncio.gather(*(store.add_thread(n, "coze", now=1.0) for n in range(1, 51)))
        await asyncio.gather(*(store.remember(f"h:{n}", n, now=2.0) for n in range(1, 51)))
        assert 2 <= store.commits < 10
        assert all([await store.find_conversation(f"h:{n}") == n for n in range(1, 51)])
        assert await store.idle_threads(before=1.5) == []  # every thread was marked used at 2.0


async def test_a_failed_write_leaves_nothing_of_itself_and_spoils_no_other(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "bridge.db") as store:
        await store.add_thread(1, "coze", now=1.0)
        commits = store.commits
        # No public write can fail on a sound database, so this one is written by hand: its
        # first statement succeeds, its second breaks a NOT NULL constraint.
        broken = store._write(
            ("INSERT INTO model_rests VALUES (?, ?)", (8, 1.0)),
            ("INSERT INTO threads (thread_id) VALUES (?)", (2,)),
        )
        results = await asyncio.gather(
            store.remember("h:good", 1, now=2.0),
            broken,
            store.rest_model(7, until=3.0),
            return_exceptions=True,
        )
        assert store.commits == commits + 1  # the three shared a commit
        assert results[0] is None
        assert isinstance(results[1], sqlite3.IntegrityError)
        assert results[2] is None
        assert await store.find_conversation("h:good") == 1
        assert await store.model_rests() == {7: 3.0}  # not 8: the broken write left nothing
        assert await store.idle_threads(before=10.0) == [1]


async def test_a_write_that_loses_the_whole_transaction_takes_the_earlier_ones_with_it(
    tmp_path: Path,
) -> None:
    async with open_sqlite_store(tmp_path / "bridge.db") as store:
        # A full disk makes SQLite roll back the whole transaction, not just the statement; the
        # writes before the failing one must then fail too rather than report a commit.
        pages = await store.call(lambda db: db.execute("PRAGMA page_count").fetchone()[0])
        await store.call(lambda db: db.execute(f"PRAGMA max_page_count = {int(pages) + 1}"))
        results = await asyncio.gather(
            store.rest_model(7, until=1.0),
            store.save_token(StoredToken("x" * 100_000, invalid=False, day_start=0.0, requests_today=0)),
            return_exceptions=True,
        )
        assert all(isinstance(result, sqlite3.OperationalError) for result in results)
        assert "full" in str(results[0])
        assert await store.model_rests() == {}
        await store.rest_model(7, until=1.0)  # the store is still usable afterwards
        assert await store.model_rests() == {7: 1.0}


async def test_a_write_whose_caller_gave_up_is_still_committed(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    queued = asyncio.Event()

    async with open_sqlite_store(path) as store:
        await store.add_thread(1, "coze", now=1.0)

        async def caller() -> None:
            queued.set()  # the write queues before its first pause, so before the test resumes
            await store.remember("h:late", 1, now=2.0)

        writer = asyncio.create_task(caller())
        neighbour = asyncio.create_task(store.remember("h:other", 1, now=2.0))
        await queued.wait()
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        await neighbour  # the caller's giving up spoils nothing of the commit it shares
    async with open_sqlite_store(path) as reopened:
        assert await reopened.find_conversation("h:late") == 1
        assert await reopened.find_conversation("h:other") == 1
