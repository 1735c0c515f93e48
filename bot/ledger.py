"""The token pool as the backend changes it: each change made and persisted in one call.

Persisting is write-behind: the change is in memory at once, and the store write runs as a
background task the client never waits for (a crash can lose only writes not yet durable).
`Attempts` walks one prompt through the pool: which token posts next, and what each of Coze's
or Discord's refusals means for the next try (another token, a pause, or the end).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from bot.config import ModelSettings
from bot.interface import CozeBusy, CozeLimited, ModelLimited
from bot.store import Store
from bot.tasks import TaskSet
from bot.token_pool import PoolToken, TokenPool, utc

log = logging.getLogger(__name__)

BUSY_TRIES = 3


class InvalidToken(Exception):
    """Discord refused the token (401, or 403 "verify your account"); the next one posts."""


class Ledger:
    def __init__(self, pool: TokenPool, store: Store, writes: TaskSet) -> None:
        self.pool = pool
        self._store = store
        self._writes = writes
        # Tokens whose row changed since it was last written: a post changes one every request,
        # and a single writer saves each changed row once, however many posts came meanwhile.
        self._dirty: dict[str, PoolToken] = {}
        self._saving = False

    def _persist(self, write: Coroutine[Any, Any, None]) -> None:
        self._writes.spawn(write, name="token-ledger")

    def _changed(self, token: PoolToken) -> None:
        self._dirty[token.fingerprint] = token
        if not self._saving:
            self._saving = True
            self._persist(self._save_changed())

    async def _save_changed(self) -> None:
        try:
            while self._dirty:
                tokens, self._dirty = list(self._dirty.values()), {}
                # Saved together, so they share one commit.
                await asyncio.gather(*(self._store.save_token(token.stored()) for token in tokens))
        finally:
            self._saving = False

    def count_post(self, token: PoolToken, now: float) -> None:
        self.pool.count_request(token, now)
        self._changed(token)

    def invalidate(self, token: PoolToken) -> None:
        if token.invalid:
            return
        log.error("%s was refused by Discord; it will not be used again", token.masked)
        token.invalid = True
        self._changed(token)

    def rest_token(self, token: PoolToken, model: ModelSettings, now: float) -> float:
        until = self.pool.rest(token, model.coze_bot_id, now)
        self._persist(self._store.rest_token(token.fingerprint, model.coze_bot_id, until))
        log.warning(
            "%s has used up its Coze quota for '%s'; resting until %s",
            token.masked,
            model.name,
            utc(until).isoformat(timespec="minutes"),
        )
        return until

    def rest_model(self, model: ModelSettings, now: float) -> float:
        until = self.pool.rest_model(model.coze_bot_id, now)
        self._persist(self._store.rest_model(model.coze_bot_id, until))
        return until

    def check(self, model: ModelSettings, now: float) -> None:
        """Fail before posting anything when no prompt could be answered."""
        if until := self.pool.model_resting_until(model.coze_bot_id, now):
            raise ModelLimited(
                f"the Coze bot behind '{model.name}' is out of credits until {utc(until):%H:%M} UTC",
                retry_after=until - now,
            )
        if self.pool.pick(model.coze_bot_id, now, advance=False) is None:
            raise self.all_resting(model, now, posted=False)

    def all_resting(
        self, model: ModelSettings, now: float, *, posted: bool, notice: str | None = None
    ) -> CozeLimited:
        until = self.pool.earliest_return(model.coze_bot_id, now)
        lead, tail = (f"{notice} (", ")") if notice else ("", "")
        if until is None:
            return CozeLimited(f"{lead}no valid user token can post to '{model.name}'{tail}", posted=posted)
        return CozeLimited(
            f"{lead}every user token has used up today's Coze quota for '{model.name}'; "
            f"the first is back at {utc(until):%H:%M} UTC{tail}",
            posted=posted,
            retry_after=until - now,
        )


class Attempts:
    """One prompt's way through the pool."""

    def __init__(self, ledger: Ledger, model: ModelSettings, busy_backoff: float) -> None:
        self._ledger = ledger
        self._model = model
        self._spent: list[PoolToken] = []
        self._notice: str | None = None
        self._busy = 0
        self._backoff = busy_backoff

    def next(self, now: float, *, posted: bool) -> PoolToken:
        """The token to post with; CozeLimited when none is left."""
        token = self._ledger.pool.pick(self._model.coze_bot_id, now, exclude=self._spent)
        if token is None:
            raise self._ledger.all_resting(self._model, now, posted=posted, notice=self._notice)
        return token

    def failed(self, token: PoolToken, exc: Exception, now: float) -> float:
        """Book the failure; the pause before the next try, or raise when there is none."""
        if isinstance(exc, InvalidToken):
            self._ledger.invalidate(token)
            self._spent.append(token)
            return 0.0
        if isinstance(exc, CozeLimited):
            # Nothing was streamed (notices are held back): the next token asks again.
            self._notice = exc.message
            self._ledger.rest_token(token, self._model, now)
            self._spent.append(token)
            return 0.0
        if isinstance(exc, ModelLimited):
            exc.retry_after = self._ledger.rest_model(self._model, now) - now
            raise exc
        if isinstance(exc, CozeBusy):
            self._busy += 1
            if self._busy == BUSY_TRIES:
                raise exc
            pause, self._backoff = self._backoff, self._backoff * 2
            log.info("Coze is busy, posting again in %.1fs", pause)
            return pause
        raise exc
