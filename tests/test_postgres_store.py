"""What only the PostgreSQL store has: migrations under a lock, ordered batches, start-up errors,
`storage.url`, and the bridge end to end on a real server (tests/pg_server.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import ValidationError

from bot.config import StorageSettings
from bot.interface import StartupError
from bot.postgres_store import MIGRATIONS, PostgresStore, describe, open_postgres_store
from bot.sqlite_store import SCHEMA_VERSION, SqliteStore
from bot.store import StoredConversation, StoredToken
from bot.stores import open_store
from bridge_api.settings import ConfigError, load_settings
from simdiscord import SimulatedDiscord
from tests.conftest import Bridge, BridgeFactory, failed_start
from tests.pg_server import PgServer, PrivatePg, database

PASSWORD = "pg-pass-7f3c9e1d"


@pytest.fixture
async def blank_url(pg_server: PgServer) -> AsyncIterator[str]:
    """A database with nothing in it: no schema yet."""
    async with database(pg_server, migrated=False) as name:
        yield pg_server.url(name)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but not listening: a connection to it is refused, and nobody else takes it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


async def execute(url: str, *statements: str) -> None:
    db = await asyncpg.connect(url)
    try:
        for sql in statements:
            await db.execute(sql)
    finally:
        await db.close()


# Migrations.
async def test_the_schema_has_sqlites_versions_and_records_its_own(blank_url: str) -> None:
    assert len(MIGRATIONS) == SCHEMA_VERSION
    async with open_postgres_store(blank_url) as store:
        assert store.applied == SCHEMA_VERSION
        assert await store.schema_version() == SCHEMA_VERSION
    async with open_postgres_store(blank_url) as again:
        assert again.applied == 0, "a migrated database is migrated no further"
        assert await again.schema_version() == SCHEMA_VERSION


async def test_instances_starting_together_migrate_once(blank_url: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        stores = await asyncio.gather(
            *(stack.enter_async_context(open_postgres_store(blank_url)) for _ in range(4))
        )
        # One did every step; the others waited on the lock and found the schema done.
        assert sorted(store.applied for store in stores) == [0, 0, 0, SCHEMA_VERSION]
        assert [await store.schema_version() for store in stores] == [SCHEMA_VERSION] * 4
        await stores[0].add_thread(1, "coze", now=1.0)
        await stores[3].remember("h:a", 1, now=2.0, caller="alice")
        assert await stores[1].find_conversation("h:a") == 1, "one database, shared"


async def test_an_old_database_opens_after_an_upgrade(blank_url: str) -> None:
    async with open_postgres_store(blank_url, schema=1) as old:
        assert await old.schema_version() == 1
    # Rows as version 1 wrote them.
    await execute(
        blank_url,
        "INSERT INTO threads VALUES (111, 'coze', 1000.0, 1000.0)",
        "INSERT INTO conversations (key, thread_id, updated_at) VALUES ('h:abc', 111, 1000.0)",
        "INSERT INTO tokens VALUES ('fp1', TRUE, 0.0, 3)",
    )
    async with open_postgres_store(blank_url) as upgraded:
        assert upgraded.applied == SCHEMA_VERSION - 1
        assert await upgraded.find_conversation("h:abc") == 111
        assert await upgraded.conversations("alice") == []
        assert (await upgraded.tokens())["fp1"] == StoredToken(
            "fp1", invalid=True, day_start=0.0, requests_today=3
        )
        await upgraded.remember("h:def", 111, 1100.0, "alice")
        assert await upgraded.conversations("alice") == [
            StoredConversation("h:def", 111, "coze", 1000.0, 1100.0, turns=1, pinned=False)
        ]
        disabled = StoredToken("fp1", True, 0.0, 3, invalid_reason="401", disabled=True, disabled_since=5.0)
        await upgraded.save_token(disabled)
        assert (await upgraded.tokens())["fp1"] == disabled


async def test_a_newer_database_is_refused(postgres_url: str) -> None:
    await execute(postgres_url, "UPDATE schema_version SET version = 99")
    with pytest.raises(StartupError, match="newer"):
        async with open_postgres_store(postgres_url):
            pass


# Writes.
async def test_writes_keep_their_order_and_share_commits(postgres_url: str) -> None:
    async with open_postgres_store(postgres_url) as store:
        # Write-behind callers do not wait for each other: the last save must still win.
        saves = [StoredToken("fp", invalid=False, day_start=0.0, requests_today=n) for n in range(50)]
        await asyncio.gather(*(store.save_token(row) for row in saves))
        assert (await store.tokens())["fp"].requests_today == 49
        assert store.commits < 10


async def test_a_failed_write_leaves_nothing_of_itself_and_spoils_no_other(postgres_url: str) -> None:
    async with open_postgres_store(postgres_url) as store:
        await store.add_thread(1, "coze", now=1.0)
        # Its first statement succeeds, its second breaks a NOT NULL constraint.
        broken = store._write(
            ("INSERT INTO model_rests VALUES ($1, $2)", (8, 1.0)),
            ("INSERT INTO threads (thread_id) VALUES ($1)", (2,)),
        )
        results = await asyncio.gather(
            store.remember("h:good", 1, now=2.0),
            broken,
            store.rest_model(7, until=3.0),
            return_exceptions=True,
        )
        assert results[0] is None
        assert isinstance(results[1], asyncpg.NotNullViolationError)
        assert results[2] is None
        assert await store.find_conversation("h:good") == 1
        assert await store.model_rests() == {7: 3.0}
        await store.rest_model(9, until=4.0)  # and the store goes on
        assert await store.model_rests() == {7: 3.0, 9: 4.0}


async def test_a_write_whose_caller_gave_up_is_still_committed(postgres_url: str) -> None:
    queued = asyncio.Event()
    async with open_postgres_store(postgres_url) as store:
        await store.add_thread(1, "coze", now=1.0)

        async def caller() -> None:
            queued.set()  # the write queues before its first pause, so before the test resumes
            await store.remember("h:late", 1, now=2.0)

        writer = asyncio.create_task(caller())
        await queued.wait()
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
    async with open_postgres_store(postgres_url) as reopened:
        assert await reopened.find_conversation("h:late") == 1


# Start-up.
async def test_an_unreachable_server_is_one_line_naming_it_without_the_password(closed_port: int) -> None:
    url = f"postgresql://bridge:{PASSWORD}@127.0.0.1:{closed_port}/bridge_db"
    with pytest.raises(StartupError) as caught:
        async with open_store(StorageSettings(url=url)):
            pass
    message = str(caught.value)
    assert f"127.0.0.1:{closed_port}/bridge_db" in message
    assert "\n" not in message
    assert PASSWORD not in message
    assert "bridge:" not in message


async def test_a_refused_login_names_no_password(pg_server: PgServer) -> None:
    with pytest.raises(StartupError) as caught:
        async with open_postgres_store(pg_server.url("no_such_database", password=PASSWORD)):
            pass
    assert "no_such_database" in str(caught.value)
    assert PASSWORD not in str(caught.value)


async def test_the_cli_exits_1_with_one_line_when_postgresql_is_down(
    tmp_path: Path, closed_port: int
) -> None:
    url = f"postgresql://bridge:{PASSWORD}@127.0.0.1:{closed_port}/bridge_db"
    printed, lines = await failed_start(tmp_path, f'url = "{url}"')
    assert len(lines) == 1
    assert f"PostgreSQL at 127.0.0.1:{closed_port}/bridge_db" in lines[0]
    assert PASSWORD not in printed
    assert "Traceback" not in printed


def test_a_url_is_described_by_host_port_and_database() -> None:
    assert describe(f"postgresql://u:{PASSWORD}@db.internal/bridge") == "db.internal:5432/bridge"
    assert describe("postgres://u@10.0.0.5:6432") == "10.0.0.5:6432/u"
    assert describe("postgresql:///bridge") == "localhost:5432/bridge"


# storage.url and storage.path.
def test_storage_defaults_to_todays_sqlite_file() -> None:
    settings = StorageSettings()
    assert settings.path == Path("data/bridge.db")
    assert settings.postgresql is None


@pytest.mark.parametrize(
    "given",
    [
        {"path": "x/bridge.db"},
        {"url": "sqlite:///x/bridge.db"},
        {"url": "sqlite:///x/bridge.db", "path": "x/bridge.db"},
    ],
)
def test_path_and_a_sqlite_url_say_the_same(given: dict[str, str]) -> None:
    settings = StorageSettings.model_validate(given)
    assert settings.path == Path("x/bridge.db")
    assert settings.url is not None
    assert settings.url.get_secret_value() == "sqlite:///x/bridge.db"
    assert StorageSettings.model_validate({"url": "sqlite:////var/lib/b.db"}).path == Path("/var/lib/b.db")


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ({"url": "sqlite:///a.db", "path": "b.db"}, "give one"),
        ({"url": f"postgresql://u:{PASSWORD}@h/db", "path": "b.db"}, "give one"),
        ({"url": f"mysql://u:{PASSWORD}@h/db"}, "neither"),
        ({"url": "sqlite:///"}, "neither"),
    ],
)
def test_a_url_and_path_that_disagree_or_a_strange_url_are_refused(given: dict[str, str], error: str) -> None:
    with pytest.raises(ValidationError) as caught:
        StorageSettings.model_validate(given)
    shown = str(caught.value.errors(include_input=False, include_url=False))
    assert error in shown
    assert PASSWORD not in shown


def test_an_empty_path_from_the_environment_makes_way_for_a_url(tmp_path: Path) -> None:
    # The image and the systemd unit set BRIDGE_STORAGE__PATH; clearing it lets a url in.
    url = f"postgresql://bridge:{PASSWORD}@db:5432/bridge"
    environ = {"BRIDGE_STORAGE__PATH": "", "BRIDGE_STORAGE__URL": url}
    settings = load_settings(
        environ=environ,
        bot_config=tmp_path / "absent.json",
        discord={"bot_token": "t", "guild_id": 1, "coze_bot_id": 2, "channel_id": 3},
    )
    assert settings.storage.postgresql == url
    assert settings.storage.path is None
    with pytest.raises(ConfigError) as caught:
        load_settings(
            environ=environ | {"BRIDGE_STORAGE__PATH": "/data/bridge.db"},
            bot_config=tmp_path / "absent.json",
            discord={"bot_token": "t", "guild_id": 1, "coze_bot_id": 2, "channel_id": 3},
        )
    assert "storage" in str(caught.value)
    assert PASSWORD not in str(caught.value)


async def test_open_store_picks_the_store_by_the_scheme(tmp_path: Path, postgres_url: str) -> None:
    async with open_store(StorageSettings(url=f"sqlite:///{tmp_path}/b.db")) as sqlite:
        assert isinstance(sqlite, SqliteStore)
    assert (tmp_path / "b.db").exists()
    async with open_store(StorageSettings(url=postgres_url)) as postgres:
        assert isinstance(postgres, PostgresStore)


# End to end.
async def test_the_bridge_continues_a_conversation_across_a_restart_on_postgresql(
    sim: SimulatedDiscord,
    start_bridge: BridgeFactory,
    pg_server: PgServer,
    postgres_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = pg_server.url(postgres_url.rpartition("/")[2], password=PASSWORD)  # trust: any password does
    storage = {"url": url}
    first = [{"role": "user", "content": "Remember me?"}]
    bridge: Bridge = await start_bridge(storage=storage)
    async with bridge.openai() as client:
        answer = (
            (await client.chat.completions.create(model="coze", messages=first)).choices[0].message.content
        )
    await bridge.stop()

    restarted: Bridge = await start_bridge(storage=storage)
    follow_up = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "Still?"}]
    async with restarted.openai() as client:
        await client.chat.completions.create(model="coze", messages=follow_up)
    one, two = sim.prompts_received
    assert two.channel_id == one.channel_id, "the restarted bridge found the thread in PostgreSQL"
    assert two.content == "Still?"

    db = await asyncpg.connect(postgres_url)
    try:
        assert await db.fetchval("SELECT count(*) FROM threads WHERE thread_id = $1", one.channel_id) == 1
    finally:
        await db.close()
    assert not (tmp_path / "bridge.db").exists(), "no SQLite file was made"
    assert PASSWORD not in caplog.text
    assert f"PostgreSQL at postgresql://***@127.0.0.1:{pg_server.port}/" in caplog.text


async def test_a_connection_the_server_ended_is_replaced_and_no_write_lies(postgres_url: str) -> None:
    async with open_postgres_store(postgres_url, pool_size=1) as store:
        await store.rest_model(7, until=1.0)
        # The server ends the pool's one connection, as a restarted or failed-over server would.
        name = postgres_url.rpartition("/")[2]
        await execute(
            postgres_url.rpartition("/")[0] + "/postgres",
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
        )
        # Whether the pool notices before this write or through it, the write says which it was.
        try:
            await store.rest_model(8, until=2.0)
            expected = {7: 1.0, 8: 2.0, 9: 3.0}
        except Exception:  # whichever error the driver raises for it
            expected = {7: 1.0, 9: 3.0}
        await store.rest_model(9, until=3.0)
        assert await store.model_rests() == expected


# An unreachable server (a private one, stopped and started again).
async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # sleep-ok: polls with a deadline; the store announces no retry


async def test_writes_made_while_the_server_is_down_land_in_order_once_it_is_back(
    private_pg: PrivatePg,
) -> None:
    async with open_postgres_store(private_pg.url) as store:
        await store.add_thread(1, "coze", now=1.0)
        assert store.available
        await private_pg.stop()
        first = asyncio.create_task(store.rest_model(7, until=1.0))
        await until(lambda: not store.available)
        later = asyncio.create_task(store.rest_model(7, until=2.0))  # queued behind the kept one
        refused = asyncio.create_task(store._write(("INSERT INTO threads (thread_id) VALUES ($1)", (2,))))
        with pytest.raises(ConnectionError):  # a read fails at once: its callers handle it
            await store.model_rests()
        assert not first.done()
        await private_pg.start()
        await asyncio.wait_for(asyncio.gather(first, later), 15)
        with pytest.raises(asyncpg.NotNullViolationError):  # refused for its data: not kept
            await refused
        assert store.available
        assert await store.model_rests() == {7: 2.0}, "the later write stays the later one"
        await store.remember("h:x", 1, now=3.0)
        assert await store.find_conversation("h:x") == 1
        with pytest.raises(asyncpg.NotNullViolationError):  # alone, too
            await store._write(("INSERT INTO threads (thread_id) VALUES ($1)", (3,)))
        assert store.available, "a refused write says nothing of the connection"


async def test_writes_still_kept_when_the_store_closes_are_counted_as_lost(
    private_pg: PrivatePg, caplog: pytest.LogCaptureFixture
) -> None:
    secret = StoredToken("fp-7c1e", invalid=True, day_start=0.0, requests_today=1)
    async with open_postgres_store(private_pg.url, last_try=0.5) as store:
        await store.rest_model(7, until=1.0)
        await private_pg.stop()
        writer = asyncio.create_task(store.save_token(secret))
        await until(lambda: not store.available)
        started = asyncio.get_running_loop().time()
    assert asyncio.get_running_loop().time() - started < 5, "the last try is bounded"
    with pytest.raises(ConnectionError):
        await writer
    assert "1 writes lost" in caplog.text
    assert "fp-7c1e" not in caplog.text, "a lost write's data is not logged"
