"""The port: the narrow interface the HTTP API uses to reach a Coze bot.

`bridge_api` depends on this module only (and on `bot.config`'s settings types);
`bot.backend.DiscordBackend` implements it over Discord, opened by `open_discord_backend`,
and `bot.mock.MockBackend` implements it in memory for tests.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from bot.config import BackendConfig, ModelSettings


class BridgeState(enum.Enum):
    """Where the bridge is in its life; readiness, metrics and logs all read this."""

    STARTING = "starting"
    CONNECTING = "connecting"
    READY = "ready"
    DEGRADED = "degraded"
    STOPPING = "stopping"


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
    """The request still waits for a posting slot (every heartbeat until it has one)."""


FinishReason = Literal["stop", "length", "content_filter"]


@dataclass(frozen=True, slots=True)
class Finished:
    reason: FinishReason
    content: str
    suggestions: tuple[str, ...] = ()
    images: tuple[str, ...] = ()  # image URLs in the reply, also linked at the end of `content`


ReplyEvent = TextDelta | Idle | Queued | Finished


class BridgeError(Exception):
    """A failure the API turns into an OpenAI-shaped error.

    `posted` says whether the prompt already reached Discord: a client retry would then post it
    twice, so the API forbids retries for those.
    """

    code = "bridge_error"

    def __init__(self, message: str, *, posted: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.posted = posted
        self.retry_after = retry_after


class NotReady(BridgeError):
    code = "gateway_not_ready"


class SendFailed(BridgeError):
    code = "discord_send_failed"


class ReplyTimeout(BridgeError):
    code = "timeout"


class CozeLimited(BridgeError):
    """The posting account used up its daily Coze quota."""

    code = "rate_limit_exceeded"


class ModelLimited(BridgeError):
    """The Coze bot's owner ran out of credits."""

    code = "model_rate_limited"


class CozeBusy(BridgeError):
    code = "coze_busy"


class UpstreamError(BridgeError):
    code = "upstream_error"


class ServerShutdown(BridgeError):
    code = "server_shutdown"


class PromptTooLong(BridgeError):
    """The prompt would take more Discord messages than a request may post."""

    code = "context_length_exceeded"


class ConversationBusy(BridgeError):
    """Too many requests already wait for this conversation."""

    code = "conversation_busy"


class Overloaded(BridgeError):
    """Too many requests already wait for a posting slot; nothing was posted."""

    code = "overloaded"


class TokenState(enum.Enum):
    HEALTHY = "healthy"
    RESTING = "resting"  # every Coze bot it serves gave it the daily-limit notice
    INVALID = "invalid"  # Discord refused it


@dataclass(frozen=True, slots=True)
class TokenReport:
    """A user token as /v1/status shows it (the pool's view, masked)."""

    id: str  # masked: a label and a fingerprint, never the token
    state: TokenState
    resting_until: datetime | None
    resting_models: dict[str, datetime]
    requests_today: int


@dataclass(frozen=True, slots=True)
class ModelStatus:
    name: str
    resting_until: datetime | None


# Where the operator turns the listener bot's Message Content intent on (the logs and /readyz say it).
MESSAGE_CONTENT_SWITCH = (
    "Developer Portal → your application → Bot → Privileged Gateway Intents → Message Content Intent"
)

# How the bridge found out: Coze's messages arrive empty, or Discord closed the gateway (4014).
IntentEvidence = Literal["blank_messages", "gateway_refused"]


@dataclass(frozen=True, slots=True)
class IntentMissing:
    """The listener bot cannot read message content: since when, and how that was seen."""

    since: datetime
    seen_as: IntentEvidence


@dataclass(frozen=True, slots=True)
class BackendStatus:
    state: BridgeState
    open_replies: int
    tokens: tuple[TokenReport, ...]
    models: tuple[ModelStatus, ...]
    # None while the Message Content intent works (or nothing says otherwise yet).
    intent_missing: IntentMissing | None = None


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

    def complete(self, request: PromptRequest, *, heartbeat: float) -> AsyncGenerator[ReplyEvent, None]:
        """Post the prompt and yield the reply: deltas, `Idle`s and `Queued`s, then exactly one `Finished`.

        Raises `BridgeError` instead of finishing. Closing the iterator early releases
        everything the request held.
        """
        ...


class StartupError(Exception):
    """The bridge cannot start (bad token, Discord unreachable); the message is safe to print."""


def open_discord_backend(config: BackendConfig) -> AbstractAsyncContextManager[Backend]:
    """Log in to Discord and start the gateway; the backend closes everything on exit."""
    # Imported here: the Discord side (discord.py and all) loads only for a real backend, and
    # it imports this module itself.
    from bot.connect import open_backend

    return open_backend(config)
