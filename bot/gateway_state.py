"""Where the Discord gateway is: written by the connection code alone, read by everyone else.

The listener, the backend, the reply loop, readiness, metrics and logs all read one
`GatewayState`; only `bot.gateway.Gateway` (which runs the connection) changes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bot.interface import BridgeState

log = logging.getLogger(__name__)


class GatewayState:
    __slots__ = ("_epoch", "_on_return", "_ready", "_state")

    def __init__(self) -> None:
        self._state = BridgeState.STARTING
        # Counts the returns to READY, so a waiting reply can tell the gateway was away.
        self._epoch = 0
        self._ready = asyncio.Event()
        self._on_return: list[Callable[[], None]] = []

    @property
    def state(self) -> BridgeState:
        return self._state

    @property
    def epoch(self) -> int:
        return self._epoch

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def on_return(self, callback: Callable[[], None]) -> None:
        """Call `callback` each time the gateway is READY again after being away."""
        self._on_return.append(callback)

    def set(self, state: BridgeState) -> None:
        """Move to `state` (the connection code's call). STOPPING is final."""
        if self._state is BridgeState.STOPPING:
            return  # disconnects while closing are expected
        if state is not self._state:
            log.info("gateway state: %s -> %s", self._state.value, state.value)
            self._state = state
            if state is BridgeState.READY:
                self._epoch += 1
                for callback in self._on_return:
                    callback()
        if state is BridgeState.READY:
            self._ready.set()
        else:
            self._ready.clear()
