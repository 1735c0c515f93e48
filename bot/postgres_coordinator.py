"""The `Coordinator` contract in PostgreSQL, for several bridges on one database (issue 15).

Each process is a run with a lease that a heartbeat renews every third of it; what a run holds
(conversations, a token's claim, posts in flight, the lead) stops counting once its lease has run
out, so SIGKILL frees everything within `instance.lease_seconds`, and a clean close frees it at
once. Every call that reads or changes shared state goes through one queue, applied in call
order by one writer task (`bot.coordinator_queue`): a claim sees this run's earlier `posted` and
`release`, and a write that fails because the database is away is retried until it lands. Other
runs hear of changes through LISTEN/NOTIFY. While the database is away the coordinator answers as `bot.coordination` says
(hold locally, claim freely, the last known views) and the heartbeat brings it back by itself.
The statements are in `bot.coordinator_sql`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from bot import coordinator_sql as sql
from bot.coordination import InstanceInfo, SharedToken
from bot.coordinator_queue import OpQueue, Run, Unreachable, connection, unreachable
from bot.interface import StartupError
from bot.memory_coordinator import in_use
from bot.postgres_store import CLIENT_FAILURES, CONNECT_SECONDS, _reason, connect_pool, describe
from bot.tasks import TaskSet

if TYPE_CHECKING:
    from bot.coordinator_sql import Connection, Pool

    Listener = asyncpg.Connection[asyncpg.Record]

log = logging.getLogger(__name__)
T = TypeVar("T")
POOL_SIZE = 4  # the writer, the heartbeat, and room for the goodbye while one hangs
FAILURES = (asyncpg.PostgresError, *CLIENT_FAILURES)


class PostgresCoordinator:
    """Meets `bot.coordination.Coordinator`; open it with `open_postgres_coordinator`."""

    shared = True

    def __init__(self, pool: Pool, url: str, *, name: str, lease_seconds: float) -> None:
        self.name = name
        self._pool = pool
        self._url = url
        self._lease = lease_seconds
        self._every = lease_seconds / 3
        self._run = secrets.token_hex(8)
        self._started = 0.0
        self._available = True
        self._queue = OpQueue(pool, timeout=lease_seconds, retry_max=self._every, lost=self._lost)
        self._changed = asyncio.Event()
        self._pulse = asyncio.Event()  # replaced at each notification: holds waiting look again
        self._listener: Listener | None = None
        self._tasks = TaskSet()
        self._heart: asyncio.Task[Any] | None = None
        self._abandoned = False
        self._tokens: dict[str, SharedToken] = {}
        self._instances: list[InstanceInfo] = []

    @property
    def available(self) -> bool:
        return self._available

    # Shared state, through the queue.
    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        return self._held(key)

    @asynccontextmanager
    async def _held(self, key: str) -> AsyncIterator[None]:
        held = await self._take(key)
        try:
            yield
        finally:
            if held:
                self._unhold(key)

    async def _take(self, key: str) -> bool:
        while True:
            pulse = self._pulse  # before asking: a release meanwhile still wakes this wait
            try:
                if await self._ask(lambda db: sql.hold(db, self._run, key), undo=self._unholder(key)):
                    return True
            except Unreachable:
                log.info("holding a conversation locally: PostgreSQL is unreachable")
                return False
            # NOTIFY wakes it; the timeout covers a notification lost with a connection.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._every):
                    await pulse.wait()

    def _unholder(self, key: str) -> Callable[[bool], Run[object] | None]:
        return lambda held: self._unhold_run(key) if held else None

    def _unhold_run(self, key: str) -> Run[object]:
        return lambda db: sql.unhold(db, self._run, key)

    def _unhold(self, key: str) -> None:
        self._queue.push(self._unhold_run(key))

    async def claim_post(
        self,
        fingerprint: str,
        flight: str,
        *,
        max_in_flight: int,
        daily_cap: int | None,
        day_start: float,
        now: float,
    ) -> float | None:
        def claim(db: Connection) -> Awaitable[float | None]:
            return sql.claim(
                db,
                self._run,
                fingerprint,
                flight,
                max_in_flight=max_in_flight,
                daily_cap=daily_cap,
                day_start=day_start,
                now=now,
            )

        # A caller that gives up after its claim landed would leave the token claimed for good.
        def undo(verdict: float | None) -> Run[object] | None:
            return None if verdict is not None else lambda db: sql.release(db, self._run, fingerprint, flight)

        try:
            return await self._ask(claim, undo=undo)
        except Unreachable:
            return None

    def posted(
        self, fingerprint: str, flight: str, *, ready_at: float, counted: bool, day_start: float
    ) -> None:
        self._queue.push(
            lambda db: sql.posted(db, self._run, fingerprint, flight, ready_at, counted, day_start)
        )

    def release(self, fingerprint: str, flight: str) -> None:
        self._queue.push(lambda db: sql.release(db, self._run, fingerprint, flight))

    def announce(self) -> None:
        self._queue.push(lambda db: sql.notify(db, self._run))

    async def shared_tokens(self) -> dict[str, SharedToken]:
        with contextlib.suppress(Unreachable):
            self._tokens = await self._ask(lambda db: sql.tokens(db, self._run))
        return dict(self._tokens)

    async def lead(self) -> bool:
        try:
            return await self._ask(lambda db: sql.lead(db, self._run))
        except Unreachable:
            return False  # no housekeeping while it cannot be agreed on

    async def instances(self) -> list[InstanceInfo]:
        with contextlib.suppress(Unreachable):
            self._instances = await self._ask(sql.instances)
        return list(self._instances)

    async def changed(self) -> None:
        await self._changed.wait()
        self._changed.clear()

    def _ask(self, run: Run[T], undo: Callable[[T], Run[object] | None] | None = None) -> Awaitable[T]:
        if not self._available:
            raise Unreachable
        return self._queue.ask(run, undo)

    # Liveness.
    async def _beating(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            await self._beat()

    async def _beat(self) -> None:
        try:
            async with asyncio.timeout(2 * self._every):
                async with connection(self._pool) as db:
                    reaped = await sql.beat(db, self._run, self.name, self._started, self._lease)
                await self._listen()
        except Exception as exc:  # whatever it was, the shared state cannot be used now
            self._lost(exc)
            return
        self._back()
        if reaped:
            self._notice()  # this run's own notification does not wake itself

    async def _listen(self) -> None:
        """(Re)open the LISTEN connection; one opened again may have missed news."""
        if self._listener is not None and not self._listener.is_closed():
            return
        listener: Listener = await asyncpg.connect(self._url, timeout=CONNECT_SECONDS)
        try:
            await listener.add_listener(sql.CHANNEL, self._heard)
        except BaseException:
            listener.terminate()
            raise
        reopened, self._listener = self._listener is not None, listener
        if reopened:
            self._notice()

    def _heard(self, db: object, pid: int, channel: str, payload: object) -> None:
        if payload != self._run:
            self._changed.set()
        self._wake_holds()  # this run's own releases too: its next hold may wait on one

    def _notice(self) -> None:
        self._changed.set()
        self._wake_holds()

    def _wake_holds(self) -> None:
        self._pulse.set()
        self._pulse = asyncio.Event()

    def _lost(self, exc: BaseException) -> None:
        if self._available:
            self._available = False
            log.warning(
                "PostgreSQL at %s is unreachable (%s): conversations and tokens are held locally until it returns",
                describe(self._url),
                _reason(exc, self._url),
            )
            self._notice()

    def _back(self) -> None:
        if not self._available:
            self._available = True
            log.info(
                "PostgreSQL at %s is back: conversations and tokens are shared again", describe(self._url)
            )
            self._queue.kick()
            self._notice()

    # Opening and closing.
    async def _start(self) -> None:
        async with connection(self._pool) as db:
            await sql.create_schema(db)
        await self._join()
        await self._listen()
        self._heart = self._tasks.spawn(self._beating(), name="coordinator-heartbeat")
        self._tasks.spawn(self._queue.writer(), name="coordinator-writer")

    async def _join(self) -> None:
        """Add this run; wait out the lease of a dead run of the same name (a restart after a crash)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lease * 1.1
        while True:
            try:
                async with connection(self._pool) as db:
                    self._started = await sql.join(db, self._run, self.name, self._lease)
                return
            except sql.NameTaken as taken:
                left = float(taken.args[0])
            # A live one beats again before its lease runs out: the next look is past the deadline.
            if loop.time() + left > deadline:
                raise in_use(self.name) from None
            log.info(
                "instance.name %s was in use: waiting %.1fs for that bridge's lease to run out",
                self.name,
                left,
            )
            await asyncio.sleep(left + 0.05)

    async def abandon(self) -> None:
        """Die as SIGKILL would (tests): no more heartbeats, connections dropped, nothing deleted."""
        self._abandoned = self._queue.closed = True
        await self._tasks.close()
        if self._listener is not None:
            self._listener.terminate()
        self._pool.terminate()

    async def _close(self) -> None:
        """Land what is queued (for up to a lease), then leave: what this run held is free at once."""
        leaving = self._heart is not None and not self._abandoned
        if leaving:
            # Still beating meanwhile, so that the others do not take this run for dead.
            left = await self._queue.settle(self._lease if self._available else 0.0)
            if left:
                log.warning("%d changes to the shared state are dropped at close", left)
        self._queue.closed = True
        await self._tasks.close()
        self._queue.fail_questions()
        if leaving and self._available:
            try:
                async with asyncio.timeout(2 * self._every), connection(self._pool) as db:
                    await sql.leave(db, self._run)
            except FAILURES as exc:
                log.warning(
                    "leaving the shared state failed (%s): its lease frees it", _reason(exc, self._url)
                )
        if self._listener is not None and not self._abandoned:
            try:
                await self._listener.close(timeout=self._every)
            except Exception:  # already gone: nothing to say goodbye to
                self._listener.terminate()


@asynccontextmanager
async def open_postgres_coordinator(
    url: str, *, name: str, lease_seconds: float, connect_timeout: float = CONNECT_SECONDS
) -> AsyncIterator[PostgresCoordinator]:
    """Join the bridges sharing the database at `url`; StartupError if it cannot."""
    where = describe(url)
    # min_size 0: asyncpg keeping a floor of connections logs a traceback at every failed
    # reconnection while the database is away; the heartbeat keeps one connection in use.
    pool = await connect_pool(url, min_size=0, max_size=POOL_SIZE, connect_seconds=connect_timeout)
    coordinator = PostgresCoordinator(pool, url, name=name, lease_seconds=lease_seconds)
    try:
        try:
            await coordinator._start()
        except FAILURES as exc:
            verb = "reach" if unreachable(exc) else "use"
            raise StartupError(f"cannot {verb} PostgreSQL at {where}: {_reason(exc, url)}") from None
        yield coordinator
    finally:
        try:
            await coordinator._close()
        finally:
            await pool.close()
