"""The PostgreSQL store's writes: in order, in batches, and kept while the server is away (issue 15).

Writes queue in order and commit in batches, one batch at a time: a write returns once its batch
is committed, and no write overtakes an earlier one (a token saved twice keeps the later row, as
in SQLite). A batch that fails is run again write by write, each in its own transaction, so a
failed write leaves nothing of itself and spoils no other.

A write that fails because the connection did (the server is down, restarting or shutting down,
or the network failed) is not lost: it goes back to the head of the queue and is tried again,
with whatever queued meanwhile, after a pause that doubles from RETRY_FIRST to RETRY_MAX, until
it commits. Meanwhile `available` is False. A write PostgreSQL refuses for its data fails at
once, as before. When the store closes, kept writes get a last `last_try` seconds, then are
dropped and counted in the log (never their contents). A write whose COMMIT was sent as the
connection died may have landed and is run again: the writes are upserts and deletes, which
land alike twice, but for a thread's `turns`, which may count one exchange twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import asyncpg

from bot.write_queue import Queued, Write, WriteQueue

log = logging.getLogger(__name__)

RETRY_FIRST = 0.2
RETRY_MAX = 5.0
LAST_TRY_SECONDS = 10.0

if TYPE_CHECKING:  # asyncpg's classes are generic in its stubs only
    Pool = asyncpg.Pool[asyncpg.Record]
    Connection = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
# The connection is gone, or the driver lost track of it (asyncpg's InternalClientError when
# the server ends a session mid-transaction): the connection is closed, not pooled again.
CLIENT_FAILURES = (asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)
# What tells a write it failed: PostgreSQL refused it, or the connection failed.
FAILURES = (asyncpg.PostgresError, *CLIENT_FAILURES)
# The connection failed rather than the write: worth trying again once the server is back.
CONNECTION_FAILURES = (
    *CLIENT_FAILURES,
    asyncpg.PostgresConnectionError,  # class 08, ConnectionDoesNotExistError among them
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,  # starting up or shutting down
)
# Client errors about the write itself: asyncpg's DataError (an argument it cannot encode) and
# ClientConfigurationError are ValueErrors; a schema cache gone stale fails the write as before.
NOT_CONNECTION = (
    ValueError,
    asyncpg.UnsupportedClientFeatureError,
    asyncpg.UnsupportedServerFeatureError,
    asyncpg.OutdatedSchemaCacheError,
)


def lost_connection(exc: BaseException) -> bool:
    """Whether `exc` says the connection failed, not the write."""
    return isinstance(exc, CONNECTION_FAILURES) and not isinstance(exc, NOT_CONNECTION)


@asynccontextmanager
async def connection(pool: Pool) -> AsyncIterator[Connection]:
    """A pooled connection; one that failed is closed rather than pooled again."""
    async with pool.acquire() as db:
        try:
            yield db
        except CLIENT_FAILURES:
            db.terminate()  # the pool opens a new one in its place
            raise


class Writes(WriteQueue):
    """The write queue of one store: batches in order, kept and tried again while the server is away."""

    def __init__(self, pool: Pool, *, last_try: float = LAST_TRY_SECONDS) -> None:
        super().__init__("postgres")
        self._pool = pool
        self._last_try = last_try
        # Set by `drain`: the pause before the next try ends at once.
        self._wake = asyncio.Event()
        self._close_by: float | None = None
        # False from a write's connection failure until the next commit.
        self.available = True

    async def drain(self) -> None:
        """Wait for every queued write (before closing the pool), giving kept ones a last try."""
        self._close_by = asyncio.get_running_loop().time() + self._last_try
        self._wake.set()
        try:
            await super().drain()
        finally:
            # Drained but not closed (the contract suite writes on): later writes wait as before.
            self._close_by = None
            self._wake.clear()

    async def _commit_queued(self) -> None:
        """Commit what is queued; what queues up meanwhile goes into the next batch."""
        pause = RETRY_FIRST
        while self._queued:
            batch = self._take()
            outcomes = await self._attempt([statements for statements, _ in batch])
            failure = self._keep(batch, outcomes)
            if failure is None:
                pause = RETRY_FIRST
            elif await self._rested(pause, failure):
                pause = min(pause * 2, RETRY_MAX)
            else:
                return

    def _keep(self, batch: list[Queued], outcomes: list[Exception | None]) -> Exception | None:
        """Tell each writer its outcome, or keep its write for the next try (then: why)."""
        kept: list[Queued] = []
        failure: Exception | None = None
        for (statements, committed), outcome in zip(batch, outcomes, strict=True):
            if outcome is not None and lost_connection(outcome):
                kept.append((statements, committed))
                failure = outcome
            else:
                self._settle(committed, outcome)
        if any(outcome is None for outcome in outcomes):
            self.commits += 1
        if failure is None:
            if not self.available:
                log.warning("PostgreSQL is reachable again: the writes kept meanwhile are committed")
            self.available = True
            return None
        # Kept writes go first again, ahead of any queued meanwhile: order holds.
        self._queued = kept + self._queued
        if self.available:
            self.available = False
            # The class only: a driver's message could carry more than it should.
            log.error(
                "PostgreSQL is unreachable (%s): writes are kept and tried again until it is back",
                type(failure).__name__,
            )
        return failure

    def _closing_over(self) -> bool:
        return self._close_by is not None and asyncio.get_running_loop().time() >= self._close_by

    def _drop(self, failure: Exception) -> None:
        """The store is closing and the server is still away: the kept writes are lost."""
        dropped, self._queued = self._queued, []
        self._fail(dropped, failure)
        log.error("PostgreSQL was still unreachable when the store closed: %d writes lost", len(dropped))

    async def _rested(self, seconds: float, failure: Exception) -> bool:
        """Pause before the kept writes' next try (`drain` ends the pause early, once). False
        when the store is closing and its grace is over: the kept writes are dropped."""
        loop = asyncio.get_running_loop()
        if self._close_by is not None:
            seconds = min(seconds, max(0.0, self._close_by - loop.time()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()
        if self._closing_over():
            self._drop(failure)
            return False
        return True

    async def _attempt(self, batch: Sequence[Write]) -> list[Exception | None]:
        if self._close_by is None:
            return await self._commit(batch)
        try:
            # Closing: a try that hangs (a server that does not answer) ends with the grace.
            async with asyncio.timeout_at(self._close_by):
                return await self._commit(batch)
        except TimeoutError as exc:
            return [exc] * len(batch)

    async def _commit(self, batch: Sequence[Write]) -> list[Exception | None]:
        """Each write's outcome: the batch in one transaction, or else write by write."""
        try:
            async with connection(self._pool) as db, db.transaction():
                for statements in batch:
                    await _run(db, statements)
            return [None] * len(batch)
        except FAILURES as exc:
            if lost_connection(exc):
                await self._expire()
                return [exc] * len(batch)  # the others would fail alike
            if len(batch) == 1:
                return [exc]
        outcomes: list[Exception | None] = []
        for done, statements in enumerate(batch):
            try:
                async with connection(self._pool) as db, db.transaction():
                    await _run(db, statements)
            except FAILURES as exc:
                if lost_connection(exc):
                    await self._expire()
                    # This one and the rest are tried again later, in their order.
                    return outcomes + [exc] * (len(batch) - done)
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    async def _expire(self) -> None:
        # One connection failed: the server likely restarted and the idle ones are dead too.
        # Replaced on their next acquire, rather than each failing one retried write in turn.
        await self._pool.expire_connections()


async def _run(db: Connection, statements: Write) -> None:
    for sql, params in statements:
        await db.execute(sql, *params)
