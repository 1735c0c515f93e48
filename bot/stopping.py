"""The backend's shutdown, as the reply core sees it: checked between the stages of a request,
and cutting short a Discord call in flight, so every request ends at once with ServerShutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from bot.interface import ServerShutdown

MESSAGE = "the bridge is shutting down; send the request again"


class Stopping:
    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._scopes: set[asyncio.Timeout] = set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def begin(self) -> None:
        self._event.set()
        now = asyncio.get_running_loop().time()
        for scope in list(self._scopes):
            scope.reschedule(now)  # the call in flight ends now, as a timeout we recognise

    def check(self, *, posted: bool) -> None:
        """Between stages: once shutdown began, nothing more is posted."""
        if self._event.is_set():
            raise ServerShutdown(MESSAGE, posted=posted)

    @contextlib.asynccontextmanager
    async def cut_short(self, *, posted: bool) -> AsyncIterator[None]:
        """Run the block (a Discord call); shutdown ends it with ServerShutdown.

        `posted`: whether the prompt may be in Discord if the block is cut short.
        """
        self.check(posted=posted)
        try:
            # A timeout with no deadline costs no timer until shutdown gives it one.
            async with asyncio.timeout(None) as scope:
                self._scopes.add(scope)
                try:
                    yield
                finally:
                    self._scopes.discard(scope)
        except TimeoutError:
            if self._event.is_set():
                raise ServerShutdown(MESSAGE, posted=posted) from None
            raise

    async def pause(self, seconds: float) -> None:
        """Wait `seconds` (a busy backoff), or until shutdown: then ServerShutdown."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()
        self.check(posted=True)
