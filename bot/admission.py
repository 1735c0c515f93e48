"""Posting slots: how many Discord calls (a thread, a prompt) run at once, and how many wait.

A burst of new requests would otherwise queue ahead of every open stream's next delta in the
event loop, and a flood would wait without end; past `max_waiting` a request is refused
(`Overloaded`) before it posts anything, and one that waits is told so every heartbeat.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator
from types import TracebackType

from bot.interface import Overloaded, Queued

QUEUED = Queued()
# About how long one posting slot is busy (a thread, or a prompt): Retry-After's estimate.
SECONDS_PER_POST = 1.0


class Admission:
    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._semaphore = asyncio.Semaphore(slots)
        self.waiting = 0

    def refuse_when_full(self, max_waiting: int) -> None:
        """Overloaded when `max_waiting` requests wait already (and none would get a slot now)."""
        if self.waiting >= max_waiting and self._semaphore.locked():
            raise Overloaded(
                f"{self.waiting} requests already wait to be posted to Discord; send this one again shortly",
                retry_after=max(1.0, math.ceil(self.waiting / self._slots * SECONDS_PER_POST)),
            )

    async def wait(self, heartbeat: float, *, max_waiting: int | None = None) -> AsyncGenerator[Queued, None]:
        """Take a slot (release it with `release`), yielding `Queued` every heartbeat while
        waiting. With `max_waiting`, refuse instead of waiting behind that many."""
        if max_waiting is not None:
            self.refuse_when_full(max_waiting)
        if not self._semaphore.locked():
            await self._semaphore.acquire()
            return
        self.waiting += 1
        try:
            # Nothing said at once: most waits are short, and a comment per waiting stream is
            # a write (and a read for the client) that a burst of a thousand cannot spare.
            while True:
                try:
                    async with asyncio.timeout(heartbeat):
                        await self._semaphore.acquire()
                    return
                except TimeoutError:
                    yield QUEUED
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self._semaphore.release()

    # Waiting without keep-alives or a bound: the bridge's own calls (probes).
    async def __aenter__(self) -> None:
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
