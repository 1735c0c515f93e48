"""An in-memory `Backend` for testing the HTTP API without Discord (like httpx.MockTransport)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

from bot.interface import BridgeState, PromptRequest, ReplyEvent

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
        self.models = tuple(models)
        self.requests: list[PromptRequest] = []

    async def wait_ready(self) -> None:
        return None

    def begin_shutdown(self) -> None:
        self.state = BridgeState.STOPPING

    async def complete(self, request: PromptRequest, *, heartbeat: float) -> AsyncGenerator[ReplyEvent, None]:
        self.requests.append(request)
        async for event in self.handler(request):
            yield event
