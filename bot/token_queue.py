"""Waiting for a free user token: one bounded FIFO in front of the pool, and each token's gap.

A request takes its token before it creates a thread, so a refused request has posted nothing.
When no token is free for its model now, but a healthy one will be (when a reply ends, or a gap
passes), it waits here, at most `accounts.max_queue` of them, served head first: a waiter whose
model has no free token does not hold up those behind it whose model does. Retries after a
spent token go to the front. Every change to the pool calls `serve`; a timer does when a gap
ends.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from bot.config import ModelSettings
from bot.coordination import Coordinator, LocalCoordinator
from bot.interface import BridgeError, Overloaded, Queued
from bot.seams import Clock
from bot.token_pool import PoolToken, TokenPool

log = logging.getLogger(__name__)

# About how long a token is busy per prompt when nothing else is known: Retry-After's estimate.
SECONDS_PER_PROMPT = 5.0

Refusal = Callable[[float], BridgeError]


class Lease:
    """The token one request holds, from its take until its reply ends (a retry swaps it)."""

    __slots__ = ("_flight", "claimed", "flown", "token")

    def __init__(self) -> None:
        self.token: PoolToken | None = None
        self.claimed = False  # whether it holds the token's next post
        self._flight: str | None = None
        self.flown = False  # whether the coordinator counts it in flight with `token`

    @property
    def flight(self) -> str:
        """Its posts in flight as the bridges sharing the database know them (bot.coordination);
        made on first use: a bridge alone never asks."""
        if self._flight is None:
            self._flight = secrets.token_hex(8)
        return self._flight


@dataclass(eq=False)
class _Waiter:
    model: ModelSettings
    spent: frozenset[str]
    refuse: Refusal
    future: asyncio.Future[PoolToken] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class TokenQueue:
    def __init__(
        self, pool: TokenPool, clock: Clock, *, limit: int, coordinator: Coordinator | None = None
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._coordinator: Coordinator = coordinator or LocalCoordinator("local")
        self.limit = limit
        self.full_since: float | None = None
        self._waiters: deque[_Waiter] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._changed = asyncio.Event()
        self._closed: BridgeError | None = None

    def __len__(self) -> int:
        return len(self._waiters)

    def retry_after(self, position: int) -> float:
        """A guess at when a request `position` places back would get a token."""
        tokens = [t for t in self._pool.tokens if not (t.invalid or t.disabled or not t.enabled)]
        per_prompt = max((t.pacing.min_gap + t.pacing.jitter / 2 for t in tokens), default=0.0)
        slots = sum(min(t.pacing.max_in_flight, 64) for t in tokens) or 1
        return float(max(1, math.ceil(position * max(per_prompt, SECONDS_PER_PROMPT / slots))))

    def _full(self, now: float) -> Overloaded:
        if self.full_since is None:
            self.full_since = now
            log.warning("the token queue is full (%d waiting): new requests are refused", len(self))
        return Overloaded(
            f"{len(self)} requests already wait for a free user token; send this one again shortly",
            retry_after=self.retry_after(len(self) + 1),
        )

    def refuse_when_full(self) -> None:
        """Overloaded when a new request would find the queue full and no token free."""
        now = self._clock()
        if len(self) >= self.limit and not any(self._pool.is_free(token, now) for token in self._pool.tokens):
            raise self._full(now)

    async def take(
        self,
        lease: Lease,
        model: ModelSettings,
        heartbeat: float,
        *,
        max_wait: float,
        refuse: Refusal,
        spent: frozenset[str] = frozenset(),
        retry: bool = False,
    ) -> AsyncGenerator[Queued, None]:
        """Give `lease` a free token for `model` (claiming its next post), yielding `Queued` every
        heartbeat while it waits; `refuse(now)` is the error once no usable token is left."""
        if self._closed is not None:
            raise self._closed
        now = self._clock()
        waiter = _Waiter(model, spent, refuse)
        if not retry and len(self) >= self.limit:
            # Full: only a token free for this request right now lets it in.
            token = self._pool.choose(model.coze_bot_id, now, exclude=spent)
            if token is None:
                raise (
                    refuse(now)
                    if not self._pool.any_usable(model.coze_bot_id, now, spent)
                    else self._full(now)
                )
            self._pool.take(token)
            waiter.future.set_result(token)
        elif retry:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        self.serve()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        try:
            while not waiter.future.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise Overloaded(
                        f"no user token was free for '{model.name}' within {max_wait:g}s; "
                        "send the request again shortly",
                        retry_after=self.retry_after(len(self) + 1),
                    )
                await asyncio.wait({waiter.future}, timeout=min(heartbeat, remaining))
                if not waiter.future.done() and loop.time() < deadline:
                    yield Queued(ahead=self._ahead(waiter))
            lease.token, lease.claimed = waiter.future.result(), True
        finally:
            self._settle(waiter, lease)

    def _ahead(self, waiter: _Waiter) -> int:
        for index, other in enumerate(self._waiters):
            if other is waiter:
                return index
        return 0

    def _settle(self, waiter: _Waiter, lease: Lease) -> None:
        """After a wait ends, however it ends: nothing of it stays queued, nor a token it won."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        future = waiter.future
        if not future.done():
            future.cancel()
        elif not future.cancelled() and future.exception() is None and lease.token is not future.result():
            # Given a token just as the caller went away: hand it back.
            self._pool.release(future.result(), claimed=True)
        self.serve()

    def release(self, lease: Lease) -> PoolToken | None:
        """The holder is done with its token; the token when it thereby left the pool."""
        token, lease.token = lease.token, None
        if token is None:
            return None
        if lease.flown:
            self._coordinator.release(token.fingerprint, lease.flight)
            lease.flown = False
        left = self._pool.release(token, claimed=lease.claimed)
        lease.claimed = False
        self.serve()
        return token if left else None

    async def claim(self, lease: Lease) -> None:
        """Wait for the held token's gap, then hold its next post (a re-post, or a probe), here
        and then among the bridges sharing the database."""
        assert lease.token is not None
        token = lease.token
        if not lease.claimed:
            # This bridge's own turn first: its claims and gaps are known here without asking.
            while not self._pool.may_post_here(token, now := self._clock()):
                await self._changed_or(None if token.claimed else token.ready_at - now)
            token.claimed = lease.claimed = True
        pacing = token.pacing
        if not (self._coordinator.shared and pacing.bounded):
            return  # nothing to hold across bridges: its posts reach them through `posted`
        while True:
            now = self._clock()
            retry_at = await self._coordinator.claim_post(
                token.fingerprint,
                lease.flight,
                max_in_flight=pacing.max_in_flight,
                daily_cap=pacing.daily_cap,
                day_start=self._pool.today(now),
                now=now,
            )
            if retry_at is None:
                lease.flown = True
                return
            await self._changed_or(None if math.isinf(retry_at) else retry_at - now, shared=True)

    async def _changed_or(self, seconds: float | None, *, shared: bool = False) -> None:
        """Wait for a change to the pool (here, or on another bridge when `shared`), or `seconds`."""
        waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._changed.wait())}
        if shared:
            waits.add(asyncio.ensure_future(self._coordinator.changed()))
        try:
            # Timers may fire a little early: the callers ask the clock again.
            await asyncio.wait(
                waits,
                timeout=None if seconds is None else max(0.0, seconds),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def posted(self, lease: Lease, *, counted: bool) -> None:
        """The claimed post is done (or failed): the token's gap starts now."""
        token = lease.token
        assert token is not None
        now = self._clock()
        self._pool.posted(token, now, counted=counted)
        lease.claimed = False
        if self._coordinator.shared:  # alone, nobody else needs to know
            self._coordinator.posted(
                token.fingerprint,
                lease.flight,
                ready_at=token.ready_at,
                counted=counted,
                day_start=self._pool.today(now),
            )
        self.serve()

    def close(self, error: BridgeError) -> None:
        """Refuse every waiter, and every later take, with `error` (shutdown)."""
        self._closed = error
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(error)
        self._waiters.clear()

    def serve(self) -> None:
        """Hand free tokens to waiters, head first; refuse those no usable token is left for."""
        now = self._clock()
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            bot = waiter.model.coze_bot_id
            token = self._pool.choose(bot, now, exclude=waiter.spent)
            if token is not None:
                self._pool.take(token)
                waiter.future.set_result(token)
            elif self._pool.model_resting_until(bot, now) or not self._pool.any_usable(
                bot, now, waiter.spent
            ):
                waiter.future.set_exception(waiter.refuse(now))
            else:
                continue
            self._waiters.remove(waiter)
        if not self._waiters:
            self.full_since = None
        self._changed.set()
        self._changed = asyncio.Event()
        self._arm(now)

    def _arm(self, now: float) -> None:
        """Serve again when the next gap ends (while anyone waits)."""
        if not self._waiters:
            return
        at = self._pool.next_free_at(now)
        if at is None or at >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(at - now, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self.serve()
