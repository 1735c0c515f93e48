"""The port: the narrow interface the HTTP API uses to reach a Coze bot.

`bridge_api` depends on this module only (with `bot.status`, the backend's reports of itself,
and `bot.config`'s settings types);
`bot.backend.DiscordBackend` implements it over Discord, opened by `open_discord_backend`,
and `bot.mock.MockBackend` implements it in memory for tests.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from bot.config import BackendConfig, ModelSettings
from bot.status import BackendStatus, BridgeState, TokenReport


@dataclass(frozen=True, slots=True)
class ImageFile:
    """An image the caller sent, checked and ready to upload as an attachment."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ChatTurn:
    role: str
    content: str
    images: tuple[ImageFile, ...] = ()


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may ask of the backend (from the API's settings)."""

    max_prompt_messages: int = 10  # Discord messages one prompt may take
    max_waiting_per_conversation: int = 4  # requests waiting behind the one in flight
    max_waiting: int = 256  # requests waiting for a posting slot, all conversations together
    # The longest wait for a free user token (in the pool's queue); None: completion.max_reply_seconds
    # (a stream, kept alive by `: queued` comments). A plain request sets first_reply_timeout.
    max_queue_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class PromptRequest:
    request_id: str
    model: str  # the name the caller asked for
    turns: tuple[ChatTurn, ...]
    route: int = 0  # index into `Backend.models`: the Coze bot that answers
    # The conversation the caller pinned (X-Conversation-Id or `conversation_id`), if any.
    conversation: str | None = None
    # Whose conversations these are: the caller's API key ("" without keys). Conversations of
    # one key are never found by another.
    caller: str = field(default="", repr=False)
    # OpenAI's `user`: it only keeps apart two users' identical histories; it pins nothing.
    user: str | None = None
    # Always a new thread, never remembered as a conversation (image generation).
    fresh: bool = False
    limits: Limits = Limits()


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing arrived for one heartbeat interval; lets the caller send keep-alives."""


@dataclass(frozen=True, slots=True)
class Queued:
    """The request still waits (every heartbeat until it goes on): for a free user token, with
    `ahead` requests before it in the pool's queue, or (`ahead` None) for a posting slot."""

    ahead: int | None = None


FinishReason = Literal["stop", "length", "content_filter"]


@dataclass(frozen=True, slots=True)
class Finished:
    reason: FinishReason
    content: str
    suggestions: tuple[str, ...] = ()
    images: tuple[str, ...] = ()  # image URLs in the reply, also linked at the end of `content`
    # Whether the request went on in an existing conversation's thread (False: a new thread).
    continued: bool = False
    # The backend goes on after this event until the exchange is durable (bridges sharing a
    # database): the response ends when its iterator does. False: it may end at once.
    settling: bool = False


ReplyEvent = TextDelta | Idle | Queued | Finished


class BridgeError(Exception):
    """A failure the API turns into an OpenAI-shaped error.

    `posted` says whether the prompt already reached Discord: a client retry would then post it
    twice, so the API forbids retries for those. `notice` is Coze's own text, if it sent one: it
    may say anything (a caller can dictate it), so it never goes into `message`, whose words
    gateways such as one-api read to switch a channel off.
    """

    code = "bridge_error"

    def __init__(
        self,
        message: str,
        *,
        posted: bool = False,
        retry_after: float | None = None,
        notice: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.posted = posted
        self.retry_after = retry_after
        self.notice = notice


class NotReady(BridgeError):
    code = "gateway_not_ready"


class SendFailed(BridgeError):
    code = "discord_send_failed"


class ReplyTimeout(BridgeError):
    code = "timeout"


class CozeLimited(BridgeError):
    """The posting account reached its daily limit of Coze messages."""

    code = "rate_limit_exceeded"


class ModelLimited(BridgeError):
    """The Coze bot's owner reached Coze's message limit."""

    code = "model_rate_limited"


class CozeBusy(BridgeError):
    code = "coze_busy"


class UpstreamError(BridgeError):
    code = "upstream_error"


class StorageUnavailable(BridgeError):
    """The database the bridges share cannot be reached: nothing was posted."""

    code = "storage_unavailable"


class ServerShutdown(BridgeError):
    code = "server_shutdown"


class PromptTooLong(BridgeError):
    """The prompt would take more Discord messages than a request may post."""

    code = "context_length_exceeded"


class ConversationBusy(BridgeError):
    """Too many requests already wait for this conversation."""

    code = "conversation_busy"


class Overloaded(BridgeError):
    """Too many requests already wait for a posting slot or a free token; nothing was posted."""

    code = "overloaded"


class UnknownToken(BridgeError):
    """No user token in the pool has that id (admin endpoints)."""

    code = "token_not_found"


class UnknownConversation(BridgeError):
    """The caller has no conversation with that id (another key's conversations count as none)."""

    code = "conversation_not_found"


# The id is not repeated: an operator who pastes a token where its id belongs must not see it echoed.
UNKNOWN_TOKEN = "no user token has that id; GET /admin/tokens lists them"


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    """One of a caller's conversations, as GET /v1/conversations lists it."""

    id: str  # the conversation id the caller pinned, or the thread's latest history key
    model: str
    thread_id: int
    created: datetime
    last_used: datetime
    turns: int  # exchanges finished in it


class ImageKeeper(Protocol):
    """Keeps images from Coze's replies beyond the life of Discord's signed links."""

    async def keep(self, url: str) -> str:
        """The URL to give the caller for a Discord image URL: a lasting one of the bridge's, or
        `url` itself when it cannot be kept (the answer never waits long or fails for this)."""
        ...


class Backend(Protocol):
    @property
    def state(self) -> BridgeState: ...

    @property
    def models(self) -> Sequence[ModelSettings]: ...

    def status(self) -> BackendStatus: ...

    def check_capacity(self, limits: Limits) -> None:
        """Raise `Overloaded` when a request now would wait behind `limits.max_waiting` others
        (the API asks before a stream's headers go out; `complete` checks again)."""
        ...

    async def wait_ready(self) -> None:
        """Return once requests can be served (the caller bounds the wait)."""
        ...

    def begin_shutdown(self) -> None:
        """Refuse new requests and end open replies with `ServerShutdown`."""
        ...

    def reconfigure(self, config: BackendConfig) -> None:
        """Take new tokens, per-token settings, account defaults and models at once (a reload).

        Open replies carry on with what they started with; a token no longer listed finishes its
        prompts in flight (state `retiring`) and takes no new ones. Settings that need a restart
        (the listener bot, guild, storage, proxy) are ignored here: the caller names them.
        """
        ...

    def set_token_enabled(self, token_id: str, enabled: bool) -> TokenReport:
        """Turn a token off (or back on) for good: persisted, surviving reloads and restarts.

        Raises `UnknownToken`."""
        ...

    async def conversations(self, caller: str) -> Sequence[ConversationInfo]:
        """The conversations of this caller (`PromptRequest.caller`), most recently used first."""
        ...

    async def forget_conversation(self, caller: str, conversation_id: str) -> None:
        """Forget one of the caller's conversations and archive its thread; `UnknownConversation`
        when the caller has none with that id."""
        ...

    async def check_token(self, token_id: str) -> TokenReport:
        """Ask Discord about the token now (`/users/@me`, nothing posted) and report the outcome:
        401/403 marks it invalid with the reason, a pass makes an invalid token healthy again.

        Raises `UnknownToken`."""
        ...

    def complete(self, request: PromptRequest, *, heartbeat: float) -> AsyncGenerator[ReplyEvent, None]:
        """Post the prompt and yield the reply: deltas, `Idle`s and `Queued`s, then exactly one `Finished`.

        Raises `BridgeError` instead of finishing. Closing the iterator early releases
        everything the request held.
        """
        ...


class StartupError(Exception):
    """The bridge cannot start (bad token, Discord unreachable); the message is safe to print."""


def open_discord_backend(
    config: BackendConfig, *, images: ImageKeeper | None = None
) -> AbstractAsyncContextManager[Backend]:
    """Log in to Discord and start the gateway; the backend closes everything on exit.

    `images` keeps the images of Coze's replies (None: their Discord URLs are passed on)."""
    # Imported here: the Discord side (discord.py and all) loads only for a real backend, and
    # it imports this module itself.
    from bot.connect import open_backend

    return open_backend(config, images=images)
