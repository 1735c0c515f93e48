"""The token pool as the backend changes it: each change made and persisted in one call.

Persisting is write-behind: the change is in memory at once, and the store write runs as a
background task the client never waits for (a crash can lose only writes not yet durable).
`pacing` posts with a held token once its gap has passed. `Attempts` walks one answer through
the pool: which token posts next, and what each of Coze's or Discord's refusals means for the
next try (another token, a pause, or the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from bot.config import ModelSettings
from bot.coordination import Coordinator, LocalCoordinator
from bot.interface import BridgeError, CozeBusy, CozeLimited, ModelLimited, Queued
from bot.seams import Clock
from bot.store import Store, StoredToken
from bot.tasks import TaskSet
from bot.token_pool import PoolToken, TokenPool, utc
from bot.token_queue import Lease, TokenQueue

log = logging.getLogger(__name__)

BUSY_TRIES = 3


class InvalidToken(Exception):
    """Discord refused the token (401, or 403 "verify your account"); the next one posts."""


class Ledger:
    def __init__(
        self,
        pool: TokenPool,
        store: Store,
        writes: TaskSet,
        *,
        clock: Clock,
        max_queue: int = 100,
        coordinator: Coordinator | None = None,
    ) -> None:
        self.pool = pool
        self.coordinator: Coordinator = coordinator or LocalCoordinator("local")
        self.queue = TokenQueue(pool, clock, limit=max_queue, coordinator=self.coordinator)
        self.clock = clock
        self._store = store
        self._writes = writes
        # Tokens whose row changed since it was last written: a post changes one every request,
        # and a single writer saves each changed row once, however many posts came meanwhile.
        self._dirty: dict[str, PoolToken] = {}
        self._saving = False
        self._announce = False  # a changed row is a new state other bridges should see soon
        # Tokens with a write not yet durable: what the database shows of them is older.
        self._unsaved: set[str] = set()

    def _persist(self, write: Coroutine[Any, Any, None]) -> None:
        self._writes.spawn(self._announced(write), name="token-ledger")

    def _persist_quietly(self, write: Coroutine[Any, Any, None]) -> None:
        # Posts' counts reach other bridges through the coordinator's own record of posts.
        self._writes.spawn(write, name="token-ledger")

    async def _announced(self, write: Coroutine[Any, Any, None]) -> None:
        await write
        # Bridges sharing the database look again at once, instead of at their next round.
        self.coordinator.announce()

    def refresh(
        self,
        rows: dict[str, StoredToken],
        rests: dict[tuple[str, int], float],
        model_rests: dict[int, float],
        now: float,
    ) -> None:
        """Take what other bridges sharing the database changed: invalid marks, admins'
        switches and rests (a rest only ever lengthens)."""
        for token in self.pool.tokens:
            row = rows.get(token.fingerprint)
            if row is not None and token.fingerprint not in self._unsaved:
                if (row.invalid, row.disabled) != (token.invalid, token.disabled):
                    if (token.invalid and not row.invalid) or (token.disabled and not row.disabled):
                        token.back_at = now
                    log.info("%s: another bridge marked it %s", token.masked, _state(row))
                token.invalid, token.invalid_reason, token.invalid_since = (
                    row.invalid,
                    row.invalid_reason,
                    row.invalid_since,
                )
                token.disabled, token.disabled_since = row.disabled, row.disabled_since
        for (fingerprint, bot), until in rests.items():
            rested = self.pool.find(fingerprint)
            if rested is not None and until > rested.rests.get(bot, 0.0):
                rested.rests[bot] = until
                rested.rested_at.setdefault(bot, now)
        for bot, until in model_rests.items():
            if until > self.pool.model_rests.get(bot, 0.0):
                self.pool.model_rests[bot] = until
        self.queue.serve()

    def _changed(self, token: PoolToken, *, announce: bool = False) -> None:
        self._dirty[token.fingerprint] = token
        self._unsaved.add(token.fingerprint)
        self._announce = self._announce or announce
        if not self._saving:
            self._saving = True
            self._persist_quietly(self._save_changed())

    async def _save_changed(self) -> None:
        try:
            while self._dirty:
                tokens, self._dirty = list(self._dirty.values()), {}
                # Saved together, so they share one commit.
                await asyncio.gather(*(self._store.save_token(token.stored()) for token in tokens))
        finally:
            self._saving = False
            self._unsaved = set(self._dirty)
        if self._announce:
            self._announce = False
            self.coordinator.announce()

    @contextlib.asynccontextmanager
    async def pacing(self, lease: Lease) -> AsyncIterator[Post]:
        """Post with the held token once its gap has passed; the block sets `sent` when the
        prompt (all its parts) went out, which counts it. The next gap starts on the way out."""
        await self.queue.claim(lease)
        post = Post()
        try:
            yield post
        finally:
            assert lease.token is not None
            token = lease.token
            self.queue.posted(lease, counted=post.sent)
            if post.sent:
                self._changed(token)

    def invalidate(self, token: PoolToken, reason: str, now: float) -> None:
        if token.invalid:
            return
        log.error("%s was refused by Discord (%s); it is not used until a check passes", token.masked, reason)
        token.invalid, token.invalid_reason, token.invalid_since = True, reason, now
        self._changed(token, announce=True)
        self.queue.serve()

    def revalidate(self, token: PoolToken, now: float) -> None:
        if not token.invalid:
            return
        log.info("%s passed its check: it posts again", token.masked)
        token.invalid, token.invalid_reason, token.invalid_since, token.back_at = False, None, None, now
        self._changed(token, announce=True)
        self.queue.serve()

    def set_disabled(self, token: PoolToken, disabled: bool, now: float) -> None:
        if token.disabled == disabled:
            return
        log.info("%s %s by an admin", token.masked, "disabled" if disabled else "enabled")
        token.disabled, token.disabled_since = disabled, now if disabled else None
        if not disabled:
            token.back_at = now
        self._changed(token, announce=True)
        self.queue.serve()

    def rest_token(self, token: PoolToken, model: ModelSettings, now: float) -> float:
        until = self.pool.rest(token, model.coze_bot_id, now)
        self._persist(self._store.rest_token(token.fingerprint, model.coze_bot_id, until))
        log.warning(
            "%s has reached its daily limit of Coze messages for '%s'; resting until %s",
            token.masked,
            model.name,
            utc(until).isoformat(timespec="minutes"),
        )
        self.queue.serve()
        return until

    def rest_model(self, model: ModelSettings, now: float) -> float:
        until = self.pool.rest_model(model.coze_bot_id, now)
        self._persist(self._store.rest_model(model.coze_bot_id, until))
        self.queue.serve()
        return until

    def check(self, model: ModelSettings, now: float) -> None:
        """Fail before posting anything when no prompt could be answered."""
        if self.pool.model_resting_until(model.coze_bot_id, now) or not self.pool.any_usable(
            model.coze_bot_id, now
        ):
            raise self.refusal(model, now, posted=False)

    def refusal(
        self,
        model: ModelSettings,
        now: float,
        *,
        posted: bool,
        notice: str | None = None,
    ) -> BridgeError:
        """Why no token can post for `model`: its Coze bot rests, or every token does.

        `notice` is what Coze said, if it said why; it stays out of the message (see `BridgeError`).
        """
        if until := self.pool.model_resting_until(model.coze_bot_id, now):
            return ModelLimited(
                f"the owner of the Coze bot behind '{model.name}' has reached Coze's message limit; "
                f"it answers again at {utc(until):%H:%M} UTC",
                posted=posted,
                retry_after=until - now,
                notice=notice,
            )
        return self.all_resting(model, now, posted=posted, notice=notice)

    def all_resting(
        self, model: ModelSettings, now: float, *, posted: bool, notice: str | None = None
    ) -> CozeLimited:
        # Tokens this answer spent count too: a rest they took just now ends at the reset.
        until = self.pool.earliest_return(model.coze_bot_id, now)
        if until is None:
            return CozeLimited(
                f"no valid user token can post to '{model.name}'", posted=posted, notice=notice
            )
        capped = any(self.pool.capped_until(token, now) for token in self.pool.tokens)
        spent_on = (
            "made its daily_cap of posts or reached its daily limit of Coze messages"
            if capped
            else "reached its daily limit of Coze messages"
        )
        return CozeLimited(
            f"every user token has {spent_on} for '{model.name}'; "
            f"the first is back at {utc(until):%H:%M} UTC",
            posted=posted,
            retry_after=until - now,
            notice=notice,
        )


def _state(row: StoredToken) -> str:
    if row.invalid:
        return f"invalid ({row.invalid_reason or 'refused by Discord'})"
    return "disabled" if row.disabled else "healthy"


@dataclass(slots=True)
class Post:
    sent: bool = False


class Attempts:
    """One answer's way through the pool: the token it holds, and what each refusal means."""

    def __init__(
        self, ledger: Ledger, model: ModelSettings, busy_backoff: float, lease: Lease, max_wait: float
    ) -> None:
        self._ledger = ledger
        self._model = model
        self.lease = lease
        self._max_wait = max_wait
        self._spent: set[str] = set()
        self._notice: str | None = None
        self._busy = 0
        self._first_backoff = self._backoff = busy_backoff

    def new_exchange(self) -> None:
        """Another prompt of the same answer (a "continue"): Coze's busy notices count afresh."""
        self._busy, self._backoff = 0, self._first_backoff

    async def token(self, heartbeat: float, *, posted: bool) -> AsyncGenerator[Queued, None]:
        """Make sure the lease holds a token that may post for the model, waiting in the pool's
        queue (ahead of new requests) for another when it does not; CozeLimited when none is left."""
        pool, bot = self._ledger.pool, self._model.coze_bot_id
        token, now = self.lease.token, self._ledger.clock()
        held = token is not None and not token.invalid and not pool.capped_until(token, now)
        if held and token is not None and token.resting_until(bot, now) is None:
            return  # the token it holds goes on (a busy notice, a "continue")
        if token is not None:
            self._spend()

        def refuse(now: float) -> BridgeError:
            return self._ledger.refusal(self._model, now, posted=posted, notice=self._notice)

        take = self._ledger.queue.take(
            self.lease,
            self._model,
            heartbeat,
            max_wait=self._max_wait,
            refuse=refuse,
            spent=frozenset(self._spent),
            retry=token is not None,
        )
        async with aclosing(take) as waiting:
            async for queued in waiting:
                yield queued

    def _spend(self) -> None:
        if self.lease.token is not None:
            self._spent.add(self.lease.token.fingerprint)
            self._ledger.queue.release(self.lease)

    def failed(self, exc: Exception, now: float) -> float:
        """Book the failure; the pause before the next try, or raise when there is none."""
        token = self.lease.token
        assert token is not None
        if isinstance(exc, InvalidToken):
            self._ledger.invalidate(token, str(exc) or "Discord refused it", now)
            self._spend()
            return 0.0
        if isinstance(exc, CozeLimited):
            # Nothing was streamed (notices are held back): the next token asks again.
            self._notice = exc.notice
            self._ledger.rest_token(token, self._model, now)
            self._spend()
            return 0.0
        if isinstance(exc, ModelLimited):
            self._ledger.rest_model(self._model, now)
            raise self._ledger.refusal(self._model, now, posted=exc.posted, notice=exc.notice) from None
        if isinstance(exc, CozeBusy):
            self._busy += 1
            if self._busy == BUSY_TRIES:
                raise exc
            pause, self._backoff = self._backoff, self._backoff * 2
            log.info("Coze is busy, posting again in %.1fs", pause)
            return pause
        raise exc
