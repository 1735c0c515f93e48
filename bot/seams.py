"""What the backend needs from the outside, as small Protocols (seams below the port).

`bot.rest.DiscordRest` and `bot.listener.Listener` are the real ones; tests put fakes in their
place (like httpx's transports), so the reply core runs without discord.py or a wall clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from bot.interface import ImageFile
from bot.payloads import MessagePayload
from bot.rest import Credential, MessageCreate

# Epoch seconds now: Coze's quotas reset at a wall-clock time. Deadlines use the loop's clock.
Clock = Callable[[], float]


class Poster(Protocol):
    """Makes threads and posts prompts; raises `bot.rest.RestError` when Discord refuses."""

    async def create_thread(
        self, channel_id: int, name: str, credential: Credential, *, private: bool = False
    ) -> int: ...

    async def add_thread_member(self, thread_id: int, user_id: int, credential: Credential) -> None: ...

    async def user_id(self, credential: Credential) -> int: ...

    async def post_message(
        self,
        channel_id: int,
        payload: MessageCreate,
        credential: Credential,
        *,
        files: Sequence[ImageFile] = (),
    ) -> int: ...


class History(Protocol):
    """Reads messages back, for replies whose events a lost gateway session never delivered."""

    async def messages_after(
        self, channel_id: int, after: int, credential: Credential
    ) -> list[MessagePayload]: ...


class Channels(Protocol):
    def is_text_channel(self, channel_id: int) -> bool: ...
