"""Putting a prompt into Discord: a thread for a new conversation, then the prompt's messages.

Discord's refusals are sorted here into what the caller can act on: a token that no longer
posts (`InvalidToken`), a remembered thread that is gone (`ThreadGone`), or a send failure.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

from bot.admission import Admission
from bot.config import ModelSettings
from bot.interface import ImageFile, PromptRequest, SendFailed
from bot.ledger import InvalidToken
from bot.rest import AllowedMentions, Credential, MessageCreate, RestError
from bot.router import Inbox, ReplyRouter
from bot.seams import Channels, Poster
from bot.token_pool import PoolToken

log = logging.getLogger(__name__)

THREAD_NAME_CHARS = 60
# Discord's answer to a user token that must verify its account (with 401: the token is dead).
UNVERIFIED = 40002
# A remembered thread that is gone: deleted (404), or archived and locked (50083).
THREAD_ARCHIVED = 50083
MEMBERS_KEPT = 10_000


class ThreadGone(Exception):
    """The conversation's thread no longer takes messages; start a new one."""


class Posting:
    def __init__(
        self,
        *,
        poster: Poster,
        channels: Channels,
        router: ReplyRouter,
        reader: Credential,
        credentials: dict[str, Credential],
        max_concurrent: int,
        thread_names: Literal["neutral", "prompt"] = "neutral",
        private_threads: bool = False,
    ) -> None:
        self._poster = poster
        self._channels = channels
        self._router = router
        self._reader = reader
        self._credentials = credentials
        self._thread_names = thread_names
        self._private = private_threads
        self._user_ids: dict[str, int] = {}  # token fingerprint -> its account's id
        # (thread, token fingerprint) known to be a member; forgetting one costs a repeated PUT.
        self._members: OrderedDict[tuple[int, str], None] = OrderedDict()
        self.admission = Admission(max_concurrent)

    def thread_name(self, request: PromptRequest) -> str:
        return thread_name(request, with_prompt=self._thread_names == "prompt")

    async def open_thread(self, model: ModelSettings, name: str) -> int:
        # Over our own REST client: discord.py would build and cache a Thread object for each
        # one, for good, and retry 5xx answers for ~25 s that a caller should not wait out.
        if not self._channels.is_text_channel(model.channel_id):
            raise SendFailed(f"channel {model.channel_id} is not a text channel the bot can see")
        try:
            thread_id = await self._poster.create_thread(
                model.channel_id, name, self._reader, private=self._private
            )
            if self._private:
                # A private thread is invisible to everyone not in it, the Coze bot included.
                await self._poster.add_thread_member(thread_id, model.coze_bot_id, self._reader)
        except RestError as exc:
            raise SendFailed(f"Discord did not create a thread: {exc}") from None
        return thread_id

    async def _join(self, inbox: Inbox, token: PoolToken) -> None:
        """In a private thread, the token's account must be a member before it may post."""
        key = (inbox.channel_id, token.fingerprint)
        if key in self._members:
            self._members.move_to_end(key)
            return
        credential = self._credentials[token.fingerprint]
        if (user_id := self._user_ids.get(token.fingerprint)) is None:
            user_id = self._user_ids[token.fingerprint] = await self._poster.user_id(credential)
        await self._poster.add_thread_member(inbox.channel_id, user_id, self._reader)
        self._members[key] = None
        if len(self._members) > MEMBERS_KEPT:
            self._members.popitem(last=False)

    async def post(
        self,
        inbox: Inbox,
        model: ModelSettings,
        chunks: list[str],
        files: Sequence[ImageFile],
        token: PoolToken,
    ) -> None:
        credential = self._credentials[token.fingerprint]
        if self._private:
            try:
                await self._join(inbox, token)
            except RestError as exc:
                raise _refusal(inbox, exc) from None
        # Only the Coze bot may be pinged, whatever the prompt text contains.
        mentions: AllowedMentions = {"parse": [], "users": [str(model.coze_bot_id)]}
        for index, chunk in enumerate(chunks):
            # Images ride on the last message, the one that mentions the Coze bot.
            attach = files if index == len(chunks) - 1 else ()
            payload: MessageCreate = {
                "content": chunk,
                "allowed_mentions": mentions,
                "nonce": secrets.token_hex(12),
                "enforce_nonce": True,
            }
            try:
                message_id = await self._post_once(inbox.channel_id, payload, credential, attach)
            except RestError as exc:
                raise _refusal(inbox, exc) from None
            self._router.add_prompt(inbox, message_id)

    async def _post_once(
        self, channel_id: int, payload: MessageCreate, credential: Credential, files: Sequence[ImageFile]
    ) -> int:
        """Post, and when the answer is lost on the way, ask once more with the same nonce: Discord
        answers with the message if the first post made it, so a prompt is never posted twice."""
        try:
            return await self._poster.post_message(channel_id, payload, credential, files=files)
        except RestError as exc:
            if exc.status is not None:
                raise  # Discord answered: nothing was lost on the way
            log.info("a prompt post to %s got no answer (%s); asking again with its nonce", channel_id, exc)
        try:
            return await self._poster.post_message(channel_id, payload, credential, files=files)
        except RestError as exc:
            if exc.status is not None:
                raise
            # Twice no answer: the prompt may be in Discord, so the caller must not send it again.
            raise SendFailed(f"Discord did not answer the prompt's post ({exc})", posted=True) from None


def _refusal(inbox: Inbox, exc: RestError) -> Exception:
    if exc.status == 401 or exc.code == UNVERIFIED:
        return InvalidToken(str(exc))
    if not inbox.posted and (exc.status == 404 or exc.code == THREAD_ARCHIVED):
        return ThreadGone()
    return SendFailed(str(exc), posted=inbox.posted)


def thread_name(request: PromptRequest, *, with_prompt: bool) -> str:
    """`chat · <id>`, or the prompt's first words: every member of the server reads titles."""
    last = next((turn.content for turn in reversed(request.turns) if turn.role == "user"), "")
    words = (" ".join(last.split())[:THREAD_NAME_CHARS] if with_prompt else "") or "chat"
    return f"{words} · {request.request_id[-8:]}"
