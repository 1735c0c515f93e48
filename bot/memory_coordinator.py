"""The `Coordinator` contract in one process: the reference `bot.postgres_coordinator` must match.

A `MemoryHub` is the shared database; each `MemoryCoordinator` on it is one bridge. The hub's
clock is injected, so that tests can run a lease out without waiting for it: `kill` makes an
instance dead as SIGKILL would (what it held stays held until its lease runs out on the hub's
clock), and `expire` is the other instances' heartbeats noticing that it did. `cut` and `restore`
model the database going away and coming back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

from bot.coordination import InstanceInfo, SharedToken
from bot.interface import StartupError

log = logging.getLogger(__name__)


def refusal(
    *,
    claimed_by_other: bool,
    ready_at: float,
    others_in_flight: int,
    posts_today: int,
    max_in_flight: int,
    daily_cap: int | None,
    now: float,
) -> float | None:
    """The rule of `Coordinator.claim_post`: None to claim, else when to try again."""
    if claimed_by_other or others_in_flight >= max_in_flight:
        return math.inf
    if daily_cap is not None and posts_today >= daily_cap:
        return math.inf
    # The gap is the one obstacle that ends by itself at a known time.
    return ready_at if ready_at > now else None


def in_use(name: str) -> StartupError:
    return StartupError(f"instance.name {name} is in use by a running bridge; give each instance its own")


@dataclass(eq=False, slots=True)
class _Member:
    name: str
    started: float
    dead_at: float | None = None  # when it was killed
    gone: bool = False  # closed, or its lease ran out and the others noticed
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class _Gate:
    ready_at: float = 0.0
    claim: tuple[_Member, str] | None = None
    day_start: float = 0.0
    posts_today: int = 0


class MemoryHub:
    """What instances share: a database in a few dicts, with leases on an injected clock."""

    def __init__(self, clock: Callable[[], float], *, lease_seconds: float = 30.0) -> None:
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.available = True
        self.members: list[_Member] = []
        self.holds: dict[str, _Member] = {}
        self.gates: dict[str, _Gate] = {}
        self.flights: dict[tuple[str, str], _Member] = {}
        self.leader: _Member | None = None
        # Writes made while the database is away, applied in order when it returns.
        self._pending: list[Callable[[], None]] = []
        self._pulse = asyncio.Event()

    def live(self, member: _Member) -> bool:
        if member.gone:
            return False
        return member.dead_at is None or self.clock() < member.dead_at + self.lease_seconds

    def join(self, name: str) -> _Member:
        if any(member.name == name and self.live(member) for member in self.members):
            raise in_use(name)
        member = _Member(name, self.clock())
        self.members.append(member)
        return member

    def kill(self, name: str) -> None:
        """The instance dies without a word: what it holds is free once its lease runs out."""
        for member in self.members:
            if member.name == name and member.dead_at is None and not member.gone:
                member.dead_at = self.clock()

    def expire(self) -> None:
        """The heartbeats look at the clock: instances whose lease ran out lose what they held."""
        dead = [member for member in self.members if not member.gone and not self.live(member)]
        for member in dead:
            self.leave(member)

    def leave(self, member: _Member) -> None:
        """Free everything `member` held (a clean close, or its lease ran out)."""
        member.gone = True
        self.members.remove(member)
        self.holds = {key: owner for key, owner in self.holds.items() if owner is not member}
        self.flights = {key: owner for key, owner in self.flights.items() if owner is not member}
        for gate in self.gates.values():
            if gate.claim is not None and gate.claim[0] is member:
                gate.claim = None
        if self.leader is member:
            self.leader = None
        self.wake(member)

    def cut(self) -> None:
        """The database becomes unreachable."""
        self.available = False
        self.wake(None)

    def restore(self) -> None:
        """The database is back: writes made meanwhile land, in the order they were made."""
        self.available = True
        pending, self._pending = self._pending, []
        for write in pending:
            write()
        self.wake(None)

    def write(self, change: Callable[[], None]) -> None:
        if self.available:
            change()
        else:
            self._pending.append(change)

    def wake(self, sender: _Member | None) -> None:
        """Tell every instance but `sender` that shared state changed; holds look again."""
        for member in self.members:
            if member is not sender:
                member.changed.set()
        self._pulse.set()
        self._pulse = asyncio.Event()

    def pulse(self) -> asyncio.Event:
        return self._pulse


class MemoryCoordinator:
    """Meets `bot.coordination.Coordinator`; one instance on a `MemoryHub`."""

    shared = True

    def __init__(self, hub: MemoryHub, name: str) -> None:
        self._hub = hub
        self._me = hub.join(name)
        self._tokens: dict[str, SharedToken] = {}
        self._instances: list[InstanceInfo] = []

    @property
    def name(self) -> str:
        return self._me.name

    @property
    def available(self) -> bool:
        return self._hub.available

    @property
    def _dead(self) -> bool:
        # A killed process makes no more calls; its leftover tasks' calls change nothing.
        return self._me.dead_at is not None or self._me.gone

    def close(self) -> None:
        """A clean stop: everything it held is free at once."""
        if not self._dead:
            self._hub.write(lambda: None if self._me.gone else self._hub.leave(self._me))

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        return self._held(key)

    @asynccontextmanager
    async def _held(self, key: str) -> AsyncIterator[None]:
        hub = self._hub
        while hub.available:
            owner = hub.holds.get(key)
            if owner is None or not hub.live(owner):
                hub.holds[key] = self._me
                break
            await hub.pulse().wait()
        else:
            log.info("holding a conversation locally: the shared state is unreachable")
            yield
            return
        try:
            yield
        finally:
            self._write(lambda: self._unhold(key))

    def _unhold(self, key: str) -> None:
        if self._hub.holds.get(key) is self._me:
            del self._hub.holds[key]
        self._hub.wake(self._me)

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
        hub = self._hub
        if not hub.available:
            return None
        gate = hub.gates.setdefault(fingerprint, _Gate())
        claim = gate.claim
        others = sum(
            1
            for (fp, other), owner in hub.flights.items()
            if fp == fingerprint and hub.live(owner) and (owner, other) != (self._me, flight)
        )
        verdict = refusal(
            claimed_by_other=claim is not None and hub.live(claim[0]) and claim != (self._me, flight),
            ready_at=gate.ready_at,
            others_in_flight=others,
            posts_today=gate.posts_today if gate.day_start >= day_start else 0,
            max_in_flight=max_in_flight,
            daily_cap=daily_cap,
            now=now,
        )
        if verdict is None:
            gate.claim = (self._me, flight)
            hub.flights.setdefault((fingerprint, flight), self._me)
        return verdict

    def posted(
        self, fingerprint: str, flight: str, *, ready_at: float, counted: bool, day_start: float
    ) -> None:
        def change() -> None:
            gate = self._hub.gates.setdefault(fingerprint, _Gate(day_start=day_start))
            gate.ready_at = ready_at
            if counted:
                gate.posts_today = 1 if day_start > gate.day_start else gate.posts_today + 1
                gate.day_start = max(gate.day_start, day_start)
            if gate.claim == (self._me, flight):
                gate.claim = None
            self._hub.wake(self._me)

        self._write(change)

    def release(self, fingerprint: str, flight: str) -> None:
        def change() -> None:
            if self._hub.flights.get((fingerprint, flight)) is self._me:
                del self._hub.flights[fingerprint, flight]
            gate = self._hub.gates.get(fingerprint)
            if gate is not None and gate.claim == (self._me, flight):
                gate.claim = None
            self._hub.wake(self._me)

        self._write(change)

    def announce(self) -> None:
        self._write(lambda: self._hub.wake(self._me))

    def _write(self, change: Callable[[], None]) -> None:
        if not self._dead:
            self._hub.write(change)

    async def shared_tokens(self) -> dict[str, SharedToken]:
        hub = self._hub
        if not hub.available:
            return dict(self._tokens)
        holders: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        others: collections.Counter[str] = collections.Counter()
        for (fingerprint, _), owner in hub.flights.items():
            if hub.live(owner):
                holders[fingerprint][owner.name] += 1
                others[fingerprint] += owner is not self._me
        self._tokens = {
            fingerprint: SharedToken(
                fingerprint,
                others_in_flight=others[fingerprint],
                ready_at=gate.ready_at,
                claimed=gate.claim is not None and gate.claim[0] is not self._me and hub.live(gate.claim[0]),
                day_start=gate.day_start,
                posts_today=gate.posts_today,
                holders=dict(holders[fingerprint]),
            )
            for fingerprint, gate in hub.gates.items()
        }
        return dict(self._tokens)

    async def changed(self) -> None:
        await self._me.changed.wait()
        self._me.changed.clear()

    async def lead(self) -> bool:
        hub = self._hub
        if not hub.available or self._dead:
            return False
        if hub.leader is None or hub.leader is self._me or not hub.live(hub.leader):
            hub.leader = self._me
        return hub.leader is self._me

    async def instances(self) -> list[InstanceInfo]:
        hub = self._hub
        if hub.available:
            self._instances = [
                InstanceInfo(
                    member.name,
                    member.started,
                    hub.clock() if member.dead_at is None else member.dead_at,
                    leader=member is hub.leader,
                )
                for member in sorted(hub.members, key=lambda member: member.started)
                if hub.live(member)
            ]
        return list(self._instances)
