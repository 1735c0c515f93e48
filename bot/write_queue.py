"""A store's writes, queued in order and committed in batches by one task at a time.

Both SQL stores write behind: a write returns once its batch is committed, writes that arrive
together share a commit, and a caller that gives up (its request was cancelled) still has its
write committed. `WriteQueue` is that queue and its committer task; each store says how it
commits a batch (`_commit_queued`), SQLite in a worker thread, PostgreSQL with retries.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod

# One SQL statement in the store's own dialect, with its parameters.
Statement = tuple[str, tuple[object, ...]]
# The statements of one write: they land together or not at all.
Write = tuple[Statement, ...]
Queued = tuple[Write, "asyncio.Future[None]"]


class WriteQueue(ABC):
    """The queue, its committer task (started by a write, ended when the queue is empty and
    awaited by `drain`), and the count of batches committed."""

    def __init__(self, name: str) -> None:
        self._name = name  # the committer task's
        self._queued: list[Queued] = []
        # The batch being committed: if the committer fails, its writers hear of it too.
        self._taken: list[Queued] = []
        self._committer: asyncio.Task[None] | None = None
        self.commits = 0

    async def write(self, statements: Write) -> None:
        """Run `statements` together and return once they are committed."""
        loop = asyncio.get_running_loop()
        committed = loop.create_future()
        self._queued.append((statements, committed))
        if self._committer is None:
            self._committer = loop.create_task(self._commit_all(), name=self._name)
        # Shielded: the write outlives a caller that gives up.
        await asyncio.shield(committed)

    async def drain(self) -> None:
        """Return once every queued write is settled (before closing the connection)."""
        while self._committer is not None:
            await asyncio.shield(self._committer)

    def _take(self) -> list[Queued]:
        """What is queued, as the next batch; what queues up meanwhile waits for the one after."""
        self._taken, self._queued = self._queued, []
        return self._taken

    @abstractmethod
    async def _commit_queued(self) -> None:
        """Commit batches (`_take`) until the queue is empty; each writer hears its outcome."""

    async def _commit_all(self) -> None:
        try:
            await self._commit_queued()
        except BaseException as exc:
            # The writers learn of it from their own futures; nothing is left waiting.
            self._fail(self._taken + self._queued, exc)
            self._queued = []
            if not isinstance(exc, Exception):
                raise
        finally:
            self._taken = []
            self._committer = None

    @staticmethod
    def _fail(writes: list[Queued], exc: BaseException) -> None:
        """Tell every writer not yet told that its write failed (or, on cancellation, was cancelled)."""
        for _, committed in writes:
            if committed.done():
                continue
            if isinstance(exc, Exception):
                committed.set_exception(exc)
            else:
                committed.cancel()

    @staticmethod
    def _settle(committed: asyncio.Future[None], outcome: Exception | None) -> None:
        """Tell one writer its outcome: committed (None), or why not."""
        if outcome is None:
            committed.set_result(None)
        else:
            committed.set_exception(outcome)
