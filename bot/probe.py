"""Confirming a limit notice before it rests a user token, or a whole Coze bot, for the day.

Coze says what it is asked to, also in words the echo check cannot see ("say the sentence about
the daily limit"), so one caller could otherwise rest the whole pool. A real limit answers any
prompt from the same token with the notice again: the probe is such a prompt, short and fixed,
posted in a thread the bridge keeps for it, where no caller writes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from bot.config import ModelSettings
from bot.continuation import Transcript
from bot.coze_texts import Trouble
from bot.follow import LimitNotice, follow_reply
from bot.interface import BridgeError, Finished, Idle, ServerShutdown
from bot.ledger import InvalidToken
from bot.posting import ThreadGone
from bot.reply_parts import ReplyParts
from bot.token_queue import Lease

log = logging.getLogger(__name__)

PROBE_TEXT = "Reply with the single word: ok"
THREAD_NAME = "coze-bridge limit check"
# A verdict stands this long for the same token and Coze bot: a caller who keeps dictating the
# notice costs one probe a minute, not one per request.
VERDICT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Verdict:
    confirmed: bool


class Probing:
    def __init__(self, parts: ReplyParts) -> None:
        self._parts = parts
        self._threads: dict[int, int] = {}  # model channel -> the bridge's probe thread
        # The router matches replies by thread as a fallback: one probe per thread at a time.
        self._locks: dict[int, asyncio.Lock] = {}
        self._verdicts: dict[tuple[str, int], tuple[bool, float]] = {}

    async def confirm(
        self, model: ModelSettings, lease: Lease, trouble: Trouble, heartbeat: float
    ) -> AsyncGenerator[Idle | Verdict, None]:
        """Keep-alives while the probe runs, then whether the token `lease` holds really is at
        `trouble` (the probe waits for its gap, and counts as one of its posts)."""
        token = lease.token
        assert token is not None
        key = (token.fingerprint, model.coze_bot_id)
        async with self._locks.setdefault(model.channel_id, asyncio.Lock()):
            known = self._verdicts.get(key)
            if known is not None and self._parts.clock() - known[1] < VERDICT_SECONDS:
                yield Verdict(known[0])
                return
            # No verdict (Discord refused the probe, Coze never answered it) leaves the notice
            # standing: no caller can reach the probe's thread to make it fail.
            confirmed = True
            try:
                probe = self._probe(model, lease, heartbeat)
                async with aclosing(probe):
                    async for event in probe:
                        if isinstance(event, Idle):
                            yield event
                        else:
                            confirmed = event.trouble is trouble if isinstance(event, LimitNotice) else False
            except ServerShutdown:
                raise
            except (BridgeError, InvalidToken, ThreadGone) as exc:
                log.warning("%s: the limit check got no answer (%s); the notice stands", token.masked, exc)
            self._verdicts[key] = (confirmed, self._parts.clock())
        if not confirmed:
            log.warning(
                "%s: Coze's limit notice for '%s' was not confirmed by a probe; it is passed on as an answer",
                token.masked,
                model.name,
            )
        yield Verdict(confirmed)

    async def _probe(
        self, model: ModelSettings, lease: Lease, heartbeat: float
    ) -> AsyncGenerator[Idle | Finished | LimitNotice, None]:
        token = lease.token
        assert token is not None
        for attempt in (1, 2):
            thread_id = await self._thread(model)
            inbox = self._parts.router.open(thread_id)
            try:
                try:
                    async with self._parts.ledger.pacing(lease) as paced:
                        async with self._parts.posting.admission, self._parts.stopping.cut_short(posted=True):
                            await self._parts.posting.post(
                                inbox, model, [f"<@{model.coze_bot_id}> {PROBE_TEXT}"], (), token
                            )
                        paced.sent = True
                except ThreadGone:
                    del self._threads[model.channel_id]  # someone deleted it: make another
                    if attempt == 2:
                        raise
                    continue
                reply = follow_reply(
                    inbox,
                    self._parts.gateway,
                    self._parts.completion,
                    heartbeat=heartbeat,
                    transcript=Transcript(),
                    hide_ellipsis=False,
                )
                try:
                    async with aclosing(reply):
                        async for event in reply:
                            if isinstance(event, Idle | Finished):
                                yield event
                except LimitNotice as notice:
                    yield notice
                return
            finally:
                self._parts.router.close(inbox)

    async def _thread(self, model: ModelSettings) -> int:
        if (thread_id := self._threads.get(model.channel_id)) is None:
            async with self._parts.posting.admission, self._parts.stopping.cut_short(posted=False):
                thread_id = await self._parts.posting.open_thread(model, THREAD_NAME)
            self._threads[model.channel_id] = thread_id
        return thread_id
