"""Two coordinators on one shared state, for tests/test_coordinator_contract.py and
tests/test_postgres_coordinator.py: in memory (a `MemoryHub` on a fake clock) or in PostgreSQL
(two coordinators on one real database), and what can happen to them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from bot.coordination import Coordinator
from bot.memory_coordinator import MemoryCoordinator, MemoryHub
from bot.postgres_coordinator import PostgresCoordinator, open_postgres_coordinator
from tests.pg_server import PgServer, database

# Short, so that a dead instance's lease runs out within a test; long enough that a heartbeat
# (a third of it) is never late on a busy machine.
LEASE = 1.2
PASSWORD = "coord-pass-5b81e2"
FP = "fp1"


def bounds(**given: Any) -> dict[str, Any]:
    """claim_post's keywords: room for everything unless a test says otherwise."""
    return {"max_in_flight": 8, "daily_cap": None, "day_start": 0.0, "now": 100.0, **given}


class Pair:
    """Two instances, `a` (the older) and `b`, and what can happen to them."""

    a: Coordinator
    b: Coordinator

    async def kill(self, which: Coordinator) -> None:
        """It dies as SIGKILL would: nothing it held is freed until its lease runs out."""
        raise NotImplementedError

    def lapse(self) -> None:
        """Let a lease run out (memory: on the fake clock; PostgreSQL: real time is passing)."""

    async def close(self, which: Coordinator) -> None:
        raise NotImplementedError

    async def cut(self) -> None:
        raise NotImplementedError

    async def restore(self) -> None:
        raise NotImplementedError

    async def settle(self, which: Coordinator) -> None:
        """Let tasks started just now run, and `which`'s earlier calls land (they are in order)."""
        await asyncio.sleep(0)
        await which.instances()


class MemoryPair(Pair):
    def __init__(self) -> None:
        self.now = 1000.0
        self.hub = MemoryHub(lambda: self.now, lease_seconds=30.0)
        self.a = MemoryCoordinator(self.hub, "a")
        self.now += 1
        self.b = MemoryCoordinator(self.hub, "b")

    async def kill(self, which: Coordinator) -> None:
        self.hub.kill(which.name)

    def lapse(self) -> None:
        self.now += self.hub.lease_seconds + 1
        self.hub.expire()

    async def close(self, which: Coordinator) -> None:
        assert isinstance(which, MemoryCoordinator)
        which.close()

    async def cut(self) -> None:
        self.hub.cut()

    async def restore(self) -> None:
        self.hub.restore()


class PostgresPair(Pair):
    def __init__(self, server: PgServer, database: str) -> None:
        self.server = server
        self.database = database
        self.url = server.url(database, password=PASSWORD)  # trust: any password does
        self._open: dict[str, contextlib.AsyncExitStack] = {}

    async def start(self) -> None:
        # One after the other, so that `a` is the older.
        self.a = await self.open("a")
        self.b = await self.open("b")

    async def open(self, name: str) -> PostgresCoordinator:
        stack = self._open[name] = contextlib.AsyncExitStack()
        return await stack.enter_async_context(
            open_postgres_coordinator(self.url, name=name, lease_seconds=LEASE)
        )

    async def kill(self, which: Coordinator) -> None:
        assert isinstance(which, PostgresCoordinator)
        await which.abandon()

    async def close(self, which: Coordinator) -> None:
        await self._open.pop(which.name).aclose()

    async def close_all(self) -> None:
        for stack in self._open.values():
            await stack.aclose()

    async def admin(self, sql: str) -> None:
        db = await asyncpg.connect(self.server.url("postgres"))
        try:
            await db.execute(sql)
        finally:
            await db.close()

    async def cut(self) -> None:
        # New connections are refused, and the open ones end: as a server that went away.
        await self.admin(f"ALTER DATABASE {self.database} ALLOW_CONNECTIONS false")
        await self.admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.database}'"
        )

    async def restore(self) -> None:
        await self.admin(f"ALTER DATABASE {self.database} ALLOW_CONNECTIONS true")


@contextlib.asynccontextmanager
async def postgres_pair(server: PgServer) -> AsyncIterator[PostgresPair]:
    async with database(server) as name:
        chosen = PostgresPair(server, name)
        try:
            await chosen.start()
            yield chosen
        finally:
            await chosen.close_all()


async def held_in_turn(coordinator: Coordinator, key: str, log: list[str]) -> None:
    async with coordinator.hold(key):
        log.append(f"{coordinator.name} in")


async def hold_until_cancelled(coordinator: Coordinator, key: str, entered: asyncio.Event) -> None:
    async with coordinator.hold(key):
        entered.set()
        await asyncio.Event().wait()


async def stopped(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def until_available(coordinator: Coordinator, available: bool) -> None:
    """`changed` wakes on every change of `available`."""
    while coordinator.available != available:
        await coordinator.changed()
