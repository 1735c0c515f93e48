"""What bridges sharing one database agree on, as a contract (issue 15).

Several identical bridges behind a load balancer each answer the requests they received, but a
conversation and a user token are shared: one prompt in flight per conversation, and each token's
gap, in-flight bound and daily count hold across all of them. `bot.postgres_coordinator` keeps
that in PostgreSQL, with leases a dead instance loses within `instance.lease_seconds`;
`LocalCoordinator` is the one-instance case, where the in-process locks and the pool already
say everything. `tests/test_coordinator_contract.py` runs one suite over both.

Times the caller passes (`now`, `ready_at`, `day_start`) are epoch seconds on the bridges'
clocks; a lease's life is measured on the database's clock, so skew between hosts only moves
gaps, never frees a live holder's lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SharedToken:
    """A user token as every instance sees it."""

    fingerprint: str
    # Posts awaiting Coze's reply, by live instances other than this one.
    others_in_flight: int = 0
    # No instance's next post with it may go out before this (its gap); 0.0: none yet.
    ready_at: float = 0.0
    # Another live instance (not this one) is about to post with it: nobody else may claim it.
    claimed: bool = False
    # Posts counted since the day that began at `day_start` (the reset), by every instance.
    day_start: float = 0.0
    posts_today: int = 0
    # Live instance name -> its posts in flight with the token (this one included).
    holders: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """A live bridge sharing the database."""

    name: str
    started: float  # epoch seconds
    seen: float  # its last heartbeat, on the database's clock
    leader: bool  # it runs the housekeeping


class Coordinator(Protocol):
    """Calls about one token take effect in the order they were made."""

    @property
    def name(self) -> str:
        """This instance's name (`instance.name`)."""

    @property
    def shared(self) -> bool:
        """Whether other instances may share the state (a follow-up may come to any of them)."""

    @property
    def available(self) -> bool:
        """False while the database cannot be reached: /readyz answers 503, and new requests
        `storage_unavailable` before anything is posted."""

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        """Hold the conversation `key` against other instances, waiting while another holds it.

        Released on exit, or when the holder dies, within `instance.lease_seconds`. Requests of
        this instance for one key are already in turn (`bot.conversations`): this is only the
        cross-instance part. While the database is unreachable it holds locally and says so in
        the log, so that open streams finish.
        """

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
        """Claim the token's next post for `flight` (one request's hold of the token).

        None when claimed: nobody else may claim the token until `posted`, and the flight counts
        in flight on every instance until `release`. Refused while another claim is live, the
        gap runs (`ready_at` > now), live flights other than this one reach `max_in_flight`, or
        posts since `day_start` reach `daily_cap`; then it returns when to try again: the gap's
        end, or math.inf to wait for `changed`. A flight claiming again (a re-post) still counts
        once. While the database is unreachable every claim succeeds (bounds hold per instance).
        """

    def posted(
        self, fingerprint: str, flight: str, *, ready_at: float, counted: bool, day_start: float
    ) -> None:
        """The claimed post ended; the token's gap runs to `ready_at`. `counted` adds one post to
        the day beginning at `day_start` (a new day starts the count afresh). Returns at once: it
        is written in the background, in order, and retried while the database is away."""

    def release(self, fingerprint: str, flight: str) -> None:
        """The flight's reply ended: it no longer counts in flight. Background, as `posted`."""

    async def shared_tokens(self) -> dict[str, SharedToken]:
        """Every token some instance claimed, posted or flies with, by fingerprint."""

    async def changed(self) -> None:
        """Return when another instance may have freed a token or a conversation (it released,
        posted, or changed a token's state): the pool looks again."""

    def announce(self) -> None:
        """Tell the other instances that this one changed shared state (a rest, an invalid mark)."""

    async def lead(self) -> bool:
        """Whether this instance runs the housekeeping now, taking the lead when it is free."""

    async def instances(self) -> list[InstanceInfo]:
        """The live instances, oldest first."""


class LocalCoordinator:
    """One bridge alone (SQLite): nothing to agree on with anyone."""

    shared = False
    available = True

    def __init__(self, name: str) -> None:
        self.name = name
        self._started = 0.0
        self._never = asyncio.Event()

    def started(self, now: float) -> None:
        self._started = now

    @asynccontextmanager
    async def _held(self) -> AsyncIterator[None]:
        yield

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        return self._held()

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
        return None

    def posted(
        self, fingerprint: str, flight: str, *, ready_at: float, counted: bool, day_start: float
    ) -> None:
        pass

    def release(self, fingerprint: str, flight: str) -> None:
        pass

    async def shared_tokens(self) -> dict[str, SharedToken]:
        return {}

    async def changed(self) -> None:
        await self._never.wait()

    def announce(self) -> None:
        pass

    async def lead(self) -> bool:
        return True

    async def instances(self) -> list[InstanceInfo]:
        return [InstanceInfo(self.name, self._started, self._started, leader=True)]
