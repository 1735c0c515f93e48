"""What both SQL stores' write queue promises when its committer fails: no writer is left waiting."""

from __future__ import annotations

import asyncio

import pytest

from bot.write_queue import Statement, Write, WriteQueue

WRITE: Write = (("INSERT INTO t VALUES ($1)", (1,)),)


class Stuck(WriteQueue):
    """Takes the first batch, then waits for the test to say how the commit ends."""

    def __init__(self, ending: BaseException) -> None:
        super().__init__("test")
        self.ending = ending
        self.taken = asyncio.Event()
        self.arrived = asyncio.Event()
        self.end = asyncio.Event()

    async def write(self, statements: Write) -> None:
        self.arrived.set()  # the write queues before its first pause, so before the test resumes
        await super().write(statements)

    async def _commit_queued(self) -> None:
        self._take()
        self.taken.set()
        await self.end.wait()
        raise self.ending


class Committing(WriteQueue):
    """Commits every batch, each write failing if its first statement says so."""

    def __init__(self) -> None:
        super().__init__("test")
        self.batches: list[list[Write]] = []

    async def _commit_queued(self) -> None:
        while self._queued:
            batch = self._take()
            self.batches.append([statements for statements, _ in batch])
            self.commits += 1
            for statements, committed in batch:
                self._settle(committed, ValueError(statements[0][0]) if _fails(statements[0]) else None)


def _fails(statement: Statement) -> bool:
    return statement[0] == "FAIL"


async def stuck_with_two_writers(queue: Stuck) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
    """One write in the batch being committed, one queued behind it."""
    in_batch = asyncio.create_task(queue.write(WRITE))
    await queue.taken.wait()
    queue.arrived.clear()
    queued = asyncio.create_task(queue.write(WRITE))
    await queue.arrived.wait()
    return in_batch, queued


async def test_a_failed_committer_fails_the_batch_and_the_queued_writes_alike() -> None:
    queue = Stuck(RuntimeError("the disk is gone"))
    in_batch, queued = await stuck_with_two_writers(queue)
    queue.end.set()
    for writer in (in_batch, queued):
        with pytest.raises(RuntimeError, match="the disk is gone"):
            await writer
    await queue.drain()  # the committer is gone, not stuck


async def test_a_cancelled_committer_cancels_every_writer() -> None:
    queue = Stuck(asyncio.CancelledError())
    in_batch, queued = await stuck_with_two_writers(queue)
    queue.end.set()
    for writer in (in_batch, queued):
        with pytest.raises(asyncio.CancelledError):
            await writer
    await queue.drain()


async def test_writes_keep_their_order_and_only_the_failed_one_fails() -> None:
    queue = Committing()
    results = await asyncio.gather(
        queue.write(WRITE), queue.write((("FAIL", ()),)), queue.write(WRITE), return_exceptions=True
    )
    assert results[0] is None
    assert isinstance(results[1], ValueError)
    assert results[2] is None
    assert queue.batches == [[WRITE, (("FAIL", ()),), WRITE]]
    assert queue.commits == 1
    await queue.write(WRITE)  # a new committer for a write after the queue went idle
    assert queue.commits == 2
