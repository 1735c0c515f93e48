"""One run's calls on the shared state, applied in call order by one task (`bot.postgres_coordinator`).

A write (`push`) returns at once and is retried, with a pause doubling up to `retry_max`, while
the database is away; later calls wait behind it, so calls about one token or one conversation
never overtake each other. A question (`ask`) waits for its answer behind the writes before it,
but fails at once with `Unreachable` when the database is away: the caller gives the degraded
answer rather than wait for the database.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from bot.postgres_store import CLIENT_FAILURES

if TYPE_CHECKING:
    from bot.coordinator_sql import Connection, Pool

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_RETRY = 0.05


class Unreachable(Exception):
    """The database cannot answer now: the caller gives the degraded answer."""


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database is away (try again later) rather than that it refused."""
    if isinstance(exc, (*CLIENT_FAILURES, asyncpg.PostgresConnectionError)):
        return True
    gone = (asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InsufficientResourcesError)
    # 55000: "database ... is not currently accepting connections".
    return isinstance(exc, gone) or (isinstance(exc, asyncpg.PostgresError) and exc.sqlstate == "55000")


@asynccontextmanager
async def connection(pool: Pool) -> AsyncIterator[Connection]:
    async with pool.acquire() as db:
        try:
            yield db
        except (*CLIENT_FAILURES, asyncio.CancelledError):
            db.terminate()  # broken, or cut off mid-statement: never back into the pool
            raise


Run = Callable[["Connection"], Awaitable[T]]


@dataclass(eq=False, slots=True)
class _Op:
    run: Run[Any]
    answer: asyncio.Future[Any] | None = None  # a question's; None: a write
    # Its caller gave up waiting: what takes its answer back, run next.
    undo: Callable[[Any], Run[object] | None] | None = None


class OpQueue:
    """Run `writer()` as a task; `lost` hears of each failure that says the database is away."""

    def __init__(
        self, pool: Pool, *, timeout: float, retry_max: float, lost: Callable[[BaseException], None]
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._retry_max = retry_max
        self._lost = lost
        self._ops: collections.deque[_Op] = collections.deque()
        self._queued = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._kicked = asyncio.Event()
        self.closed = False

    def push(self, run: Run[object]) -> None:
        self._add(_Op(run))

    def _add(self, op: _Op) -> None:
        if self.closed:
            log.warning("a change to the shared state after the coordinator closed is dropped")
            return
        self._ops.append(op)
        self._idle.clear()
        self._queued.set()

    async def ask(self, run: Run[T], undo: Callable[[T], Run[object] | None] | None = None) -> T:
        """The answer. If the caller gives up before it comes, `undo` (given the answer) says
        what takes it back (a claim, a hold), and that runs before any later call."""
        if self.closed:
            raise Unreachable
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        op = _Op(run, answer)
        self._add(op)
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            op.undo = undo  # the writer runs it right after the answer
            if answer.done():  # too late for that: next in the queue is all that is left
                self._take_back(op)
            raise

    def _take_back(self, op: _Op) -> None:
        if op.undo is None or op.answer is None or op.answer.exception() is not None:
            return
        if (back := op.undo(op.answer.result())) is not None:
            self.push(back)

    async def writer(self) -> None:
        delay = FIRST_RETRY
        while True:
            if not self._ops:
                self._idle.set()
                self._queued.clear()
                await self._queued.wait()
                continue
            op = self._ops[0]
            try:
                async with asyncio.timeout(self._timeout), connection(self._pool) as db:
                    result = await op.run(db)
            except Exception as exc:
                if unreachable(exc):
                    self._lost(exc)
                    self.fail_questions()
                    if op.answer is None:
                        await self._pause(delay)
                        delay = min(delay * 2, self._retry_max)
                    continue
                # Not an outage but a bug: retrying would block every later call behind it.
                log.error("PostgreSQL refused a coordination statement: %s", type(exc).__name__)
                self._ops.popleft()
                self._answer(op, Unreachable())
                continue
            self._ops.popleft()
            delay = FIRST_RETRY
            self._answer(op, result)
            if op.undo is not None and (back := op.undo(result)) is not None:
                self._ops.appendleft(_Op(back))

    async def _pause(self, seconds: float) -> None:
        self._kicked.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._kicked.wait()

    def kick(self) -> None:
        """The database is back: try the write that failed now rather than after its pause."""
        self._kicked.set()

    @staticmethod
    def _answer(op: _Op, result: object) -> None:
        if op.answer is None or op.answer.done():
            return
        if isinstance(result, Exception):
            op.answer.set_exception(result)
        else:
            op.answer.set_result(result)

    def fail_questions(self) -> None:
        """Questions get the degraded answer at once; writes stay queued, in order."""
        for op in self._ops:
            self._answer(op, Unreachable())
        self._ops = collections.deque(op for op in self._ops if op.answer is None)

    async def settle(self, seconds: float) -> int:
        """Wait up to `seconds` for the queue to empty; how many calls are left."""
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            pass
        return len(self._ops)
