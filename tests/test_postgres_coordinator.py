"""What only the PostgreSQL coordinator has: a caller giving up mid-question, a real server crashing
under two bridges, instance names, start-up errors (tests/pg_server.py's servers)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import asyncpg
import pytest

from bot.coordinator_queue import unreachable
from bot.interface import StartupError
from bot.postgres_coordinator import open_postgres_coordinator
from tests.coordinator_rig import (
    FP,
    LEASE,
    PASSWORD,
    PostgresPair,
    bounds,
    held_in_turn,
    postgres_pair,
    stopped,
    until_available,
)
from tests.pg_server import PgServer, PrivatePg


@pytest.fixture
async def pg_pair(pg_server: PgServer) -> AsyncIterator[PostgresPair]:
    async with postgres_pair(pg_server) as chosen:
        yield chosen


async def test_a_caller_that_gave_up_leaves_no_claim_and_no_hold(pg_pair: PostgresPair) -> None:
    # (In memory nothing waits: a claim or a hold is answered before its caller can give up.)
    a, b = pg_pair.a, pg_pair.b
    claiming = asyncio.create_task(a.claim_post(FP, "a1", **bounds(max_in_flight=1)))
    holding = asyncio.create_task(held_in_turn(a, "k", []))
    await asyncio.sleep(0)  # both asked: queued, maybe already answered
    await stopped(claiming)
    await stopped(holding)
    await pg_pair.settle(a)
    assert await b.claim_post(FP, "b1", **bounds(max_in_flight=1)) is None
    await held_in_turn(b, "k", [])


async def test_a_crashed_and_restarted_server_under_both(
    private_pg: PrivatePg, caplog: pytest.LogCaptureFixture
) -> None:
    url = private_pg.url_with(PASSWORD)
    async with (
        open_postgres_coordinator(url, name="a", lease_seconds=LEASE) as a,
        open_postgres_coordinator(url, name="b", lease_seconds=LEASE) as b,
    ):
        assert await a.claim_post(FP, "a1", **bounds(max_in_flight=1)) is None
        await private_pg.stop()
        await until_available(a, False)
        await until_available(b, False)
        a.posted(FP, "a1", ready_at=500.0, counted=True, day_start=0.0)
        a.release(FP, "a1")
        await private_pg.start()
        await until_available(a, True)
        await until_available(b, True)
        await a.instances()  # after a's writes, which were kept and retried
        token = (await b.shared_tokens())[FP]
        assert (token.ready_at, token.posts_today, token.others_in_flight, token.claimed) == (
            500.0,
            1,
            0,
            False,
        )
        waiting = asyncio.create_task(b.changed())
        a.announce()
        await waiting  # b listens again
    assert PASSWORD not in caplog.text


async def test_a_name_in_use_by_a_live_bridge_is_refused(postgres_url: str) -> None:
    async with open_postgres_coordinator(postgres_url, name="a", lease_seconds=LEASE):
        started = asyncio.get_running_loop().time()
        with pytest.raises(StartupError) as refused:
            async with open_postgres_coordinator(postgres_url, name="a", lease_seconds=LEASE):
                pass
        assert str(refused.value) == (
            "instance.name a is in use by a running bridge; give each instance its own"
        )
        # It waited for the other's lease to run out, and the other kept beating.
        assert asyncio.get_running_loop().time() - started > LEASE / 2


async def test_a_restart_after_a_crash_waits_out_the_old_lease(postgres_url: str) -> None:
    async with open_postgres_coordinator(postgres_url, name="a", lease_seconds=LEASE) as crashed:
        await crashed.abandon()
    async with open_postgres_coordinator(postgres_url, name="a", lease_seconds=LEASE) as again:
        assert [info.name for info in await again.instances()] == ["a"]


async def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    with socket.socket() as held:  # bound, not listening: refused, and nobody else takes it
        held.bind(("127.0.0.1", 0))
        url = f"postgresql://bridge:{PASSWORD}@127.0.0.1:{held.getsockname()[1]}/db"
        with pytest.raises(StartupError) as refused:
            async with open_postgres_coordinator(url, name="a", lease_seconds=LEASE):
                pass
    message = str(refused.value)
    assert message.startswith("cannot reach PostgreSQL at 127.0.0.1:")
    assert "\n" not in message
    assert PASSWORD not in message


def test_only_an_outage_is_retried() -> None:
    assert unreachable(ConnectionRefusedError())
    assert unreachable(asyncpg.exceptions.AdminShutdownError())
    assert unreachable(asyncpg.exceptions.ConnectionDoesNotExistError())
    assert not unreachable(asyncpg.exceptions.UniqueViolationError())
    assert not unreachable(ValueError())


async def test_a_refused_statement_is_dropped_and_blocks_nothing_behind_it(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_postgres_coordinator(postgres_url, name="a", lease_seconds=LEASE) as a:
        # A bug, not an outage: retrying it would hold up every later call forever.
        a._queue.push(lambda db: db.execute("SELECT no_such_function()"))
        assert await a.claim_post(FP, "a1", **bounds()) is None
        assert a.available
    assert "PostgreSQL refused a coordination statement: UndefinedFunctionError" in caplog.text
