"""An in-memory `Backend` for testing the HTTP API without Discord (like httpx.MockTransport).

It keeps the port's promises as `DiscordBackend` does (the `Backend` contract suite runs over
both): NotReady unless ready, and open replies end with `ServerShutdown` on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import replace

from bot.config import BackendConfig, ModelSettings
from bot.interface import (
    UNKNOWN_TOKEN,
    ConversationInfo,
    Limits,
    NotReady,
    PromptRequest,
    ReplyEvent,
    ServerShutdown,
    UnknownConversation,
    UnknownToken,
)
from bot.status import BackendStatus, BridgeState, IntentMissing, QueueStatus, TokenReport, TokenState

Handler = Callable[[PromptRequest], AsyncIterator[ReplyEvent]]


class MockBackend:
    """Answers every request with whatever `handler` yields for it."""

    def __init__(
        self,
        handler: Handler,
        *,
        state: BridgeState = BridgeState.READY,
        models: Sequence[str] = ("coze",),
    ) -> None:
        self.handler = handler
        self.state = state
        self.models = tuple(
            ModelSettings(name=name, coze_bot_id=index + 1, channel_id=index + 1)
            for index, name in enumerate(models)
        )
        self.requests: list[PromptRequest] = []
        self.open_replies = 0
        # What `status()` reports (tests set them): the intent, the tokens, the queue.
        self.intent_missing: IntentMissing | None = None
        self.tokens: list[TokenReport] = []
        self.queue = QueueStatus()
        self.configs: list[BackendConfig] = []  # every `reconfigure`, in order
        self.conversation_list: dict[str, list[ConversationInfo]] = {}  # caller -> theirs
        self._stopping = asyncio.Event()

    def status(self) -> BackendStatus:
        return BackendStatus(
            self.state,
            self.open_replies,
            tuple(self.tokens),
            (),
            intent_missing=self.intent_missing,
            queue=self.queue,
        )

    def reconfigure(self, config: BackendConfig) -> None:
        self.configs.append(config)
        self.models = tuple(config.model_routes)

    async def conversations(self, caller: str) -> Sequence[ConversationInfo]:
        return sorted(self.conversation_list.get(caller, []), key=lambda c: c.last_used, reverse=True)

    async def forget_conversation(self, caller: str, conversation_id: str) -> None:
        theirs = self.conversation_list.get(caller, [])
        kept = [c for c in theirs if c.id != conversation_id]
        if len(kept) == len(theirs):
            raise UnknownConversation("no conversation of yours has that id")
        self.conversation_list[caller] = kept

    def _token(self, token_id: str) -> int:
        for index, token in enumerate(self.tokens):
            if token.id == token_id:
                return index
        raise UnknownToken(UNKNOWN_TOKEN)

    def set_token_enabled(self, token_id: str, enabled: bool) -> TokenReport:
        index = self._token(token_id)
        state, reason = (
            (TokenState.HEALTHY, None) if enabled else (TokenState.DISABLED, "disabled by an admin")
        )
        self.tokens[index] = replace(self.tokens[index], state=state, reason=reason)
        return self.tokens[index]

    async def check_token(self, token_id: str) -> TokenReport:
        return self.tokens[self._token(token_id)]

    def check_capacity(self, limits: Limits) -> None:
        return None

    async def wait_ready(self) -> None:
        return None

    def begin_shutdown(self) -> None:
        self.state = BridgeState.STOPPING
        self._stopping.set()

    async def complete(self, request: PromptRequest, *, heartbeat: float) -> AsyncGenerator[ReplyEvent, None]:
        if self.state is not BridgeState.READY:
            raise NotReady(f"the mock backend is {self.state.value}", retry_after=5)
        self.requests.append(request)
        self.open_replies += 1
        events = aiter(self.handler(request))
        stop = asyncio.ensure_future(self._stopping.wait())
        step: asyncio.Future[ReplyEvent] | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(events))
                await asyncio.wait((step, stop), return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    raise ServerShutdown("the bridge is shutting down; send the request again", posted=True)
                try:
                    event = step.result()
                except StopAsyncIteration:
                    return
                yield event
        finally:
            self.open_replies -= 1
            for pending in (step, stop):
                if pending is not None and not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pending
            if isinstance(events, AsyncGenerator):
                await events.aclose()
