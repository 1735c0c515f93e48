"""An in-memory `Backend` for testing the HTTP API without Discord (like httpx.MockTransport)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

from bot.config import ModelSettings
from bot.interface import BackendStatus, BridgeState, PromptRequest, ReplyEvent

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

    def status(self) -> BackendStatus:
        return BackendStatus(self.state, 0, (), ())

    async def wait_ready(self) -> None:
        return None

    def begin_shutdown(self) -> None:
        self.state = BridgeState.STOPPING

    async def complete(self, request: PromptRequest, *, heartbeat: float) -> AsyncGenerator[ReplyEvent, None]:
        self.requests.append(request)
        async for event in self.handler(request):
            yield event
