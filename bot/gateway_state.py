"""Where the Discord gateway is: written by the connection code alone, read by everyone else.

The listener, the backend, the reply loop, readiness, metrics and logs all read one
`GatewayState`; only `bot.gateway.Gateway` (which runs the connection) changes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from bot.status import BridgeState, IntentEvidence, IntentMissing

log = logging.getLogger(__name__)


class GatewayState:
    __slots__ = ("_clock", "_epoch", "_intent_missing", "_on_return", "_ready", "_since", "_state")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._state = BridgeState.STARTING
        self._clock = clock
        self._since = clock()
        # A fact apart from the state: a READY gateway can still deliver Coze's replies empty.
        self._intent_missing: IntentMissing | None = None
        # Counts the returns to READY, so a waiting reply can tell the gateway was away.
        self._epoch = 0
        self._ready = asyncio.Event()
        self._on_return: list[Callable[[], None]] = []

    @property
    def state(self) -> BridgeState:
        return self._state

    @property
    def since(self) -> datetime:
        """When `state` last changed."""
        return datetime.fromtimestamp(self._since, UTC)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def intent_missing(self) -> IntentMissing | None:
        """Set while the listener bot's Message Content intent is known to be off."""
        return self._intent_missing

    def intent_seen_missing(self, seen_as: IntentEvidence) -> bool:
        """Record that message content cannot be read; True when that is news (log it then).

        The first sighting's time stays: the intent has been missing since then, whatever
        the later evidence.
        """
        known = self._intent_missing
        if known is None:
            self._intent_missing = IntentMissing(datetime.fromtimestamp(self._clock(), UTC), seen_as)
            return True
        if known.seen_as != seen_as:
            log.info("message content intent still missing, now seen as %s", seen_as)
            self._intent_missing = IntentMissing(known.since, seen_as)
        return False

    def intent_seen_working(self) -> IntentMissing | None:
        """Clear the fact (the intent proved to work); returns what was cleared, if anything."""
        known, self._intent_missing = self._intent_missing, None
        return known

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
            self._state, self._since = state, self._clock()
            if state is BridgeState.READY:
                self._epoch += 1
                for callback in self._on_return:
                    callback()
        if state is BridgeState.READY:
            self._ready.set()
        else:
            self._ready.clear()
