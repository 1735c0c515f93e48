"""Asking Discord whether each user token still works: GET /users/@me, nothing posted.

At start-up (in the background) and every `accounts.check_hours` (times a random factor in
[0.9, 1.1], so checks of many bridges never fall in step). A 401 or 403 marks the token
invalid with the reason; a token that passes while invalid is healthy again; a network error
changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Protocol

from bot.ledger import Ledger
from bot.rest import Credential, RestError
from bot.token_pool import PoolToken

log = logging.getLogger(__name__)


class Accounts(Protocol):
    async def user_id(self, credential: Credential) -> int: ...


class TokenChecks:
    def __init__(
        self,
        ledger: Ledger,
        accounts: Accounts,
        credentials: dict[str, Credential],
        *,
        interval: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._ledger = ledger
        self._accounts = accounts
        self._credentials = credentials
        self._interval = interval  # seconds, read afresh each round (a reload may change it)
        self._rng = rng

    async def check(self, token: PoolToken) -> None:
        credential = self._credentials.get(token.fingerprint)
        if credential is None:
            return  # it left the pool meanwhile
        try:
            await self._accounts.user_id(credential)
        except RestError as exc:
            if exc.status in (401, 403):
                reason = f"Discord answered {exc.status} to /users/@me"
                self._ledger.invalidate(token, reason, self._ledger.clock())
            else:
                log.warning("%s: its check could not reach Discord (%s); nothing changed", token.masked, exc)
            return
        self._ledger.revalidate(token, self._ledger.clock())

    async def check_all(self) -> None:
        for token in list(self._ledger.pool.tokens):
            await self.check(token)

    async def run(self) -> None:
        """Check every token now, then every interval, until cancelled."""
        first = True
        while True:
            try:
                # At start every bridge checks its tokens; after that, only the one that leads
                # the bridges sharing a database, so Discord sees one check per token per round.
                if first or await self._ledger.coordinator.lead():
                    await self.check_all()
            except Exception:
                log.exception("the token checks failed; trying again next round")
            first = False
            await asyncio.sleep(self._interval() * self._rng.uniform(0.9, 1.1))
