"""One contract for every `Backend`: the in-memory mock and the Discord backend over the
simulated Discord (real discord.py) get the same requests and must end them the same way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.interface import (
    Backend,
    ChatTurn,
    Finished,
    NotReady,
    PromptRequest,
    ReplyEvent,
    ServerShutdown,
    TextDelta,
    UnknownConversation,
    UnknownToken,
    open_discord_backend,
)
from bot.mock import MockBackend
from bot.status import BridgeState
from simdiscord import PromptInfo, ReplyPlan, SimulatedDiscord
from tests.conftest import sim_settings

ANSWER = "A contract answer, streamed in several edits by the Coze bot."


@dataclass
class Subject:
    """A backend under the contract, and how to make it answer, hang or lose its gateway."""

    backend: Backend
    hold_replies: asyncio.Event = field(default_factory=asyncio.Event)  # set: replies never come
    prompted: asyncio.Event = field(default_factory=asyncio.Event)  # a prompt reached "Coze"
    unready: contextlib.AbstractContextManager[None] | None = None

    def open_replies(self) -> int:
        return self.backend.status().open_replies


@contextlib.contextmanager
def _mock_degraded(backend: MockBackend) -> Iterator[None]:
    backend.state = BridgeState.DEGRADED
    yield
    backend.state = BridgeState.READY


async def _mock_subject() -> AsyncIterator[Subject]:
    subject: Subject

    async def handler(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
        subject.prompted.set()
        if subject.hold_replies.is_set():
            await asyncio.Event().wait()
        for end in range(10, len(ANSWER), 10):
            yield TextDelta(ANSWER[end - 10 : end])
        yield TextDelta(ANSWER[len(ANSWER) // 10 * 10 :])
        yield Finished("stop", ANSWER, ("More",))

    backend = MockBackend(handler)
    subject = Subject(backend)
    subject.unready = _mock_degraded(backend)
    yield subject


async def _discord_subject(tmp_path: Path) -> AsyncIterator[Subject]:
    async with SimulatedDiscord() as sim, open_discord_backend(sim_settings(sim, tmp_path)) as backend:
        subject = Subject(backend)

        def script(prompt: PromptInfo) -> ReplyPlan:
            subject.prompted.set()
            return ReplyPlan(
                text=ANSWER,
                chunk_chars=10,
                step_delay=0.002,
                suggestions=["More"],
                silent=subject.hold_replies.is_set(),
            )

        sim.script = script
        state = backend._gateway  # type: ignore[attr-defined]

        @contextlib.contextmanager
        def degraded() -> Iterator[None]:
            state.set(BridgeState.DEGRADED)  # the test stands in for the connection code
            yield
            state.set(BridgeState.READY)

        subject.unready = degraded()
        async with asyncio.timeout(10):
            await backend.wait_ready()
        yield subject


@pytest.fixture(params=["mock", "discord"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    made = _mock_subject() if request.param == "mock" else _discord_subject(tmp_path)
    async for value in made:
        yield value


def ask(text: str = "hello") -> PromptRequest:
    return PromptRequest(request_id="req_contract", model="coze", turns=(ChatTurn("user", text),))


async def test_deltas_then_exactly_one_finish_with_the_whole_text(subject: Subject) -> None:
    events = [event async for event in subject.backend.complete(ask(), heartbeat=3600)]
    assert isinstance(events[-1], Finished)
    assert [type(event) for event in events[:-1]] == [TextDelta] * (len(events) - 1)
    assert "".join(event.text for event in events if isinstance(event, TextDelta)) == ANSWER
    assert events[-1].content == ANSWER
    assert events[-1].reason == "stop"
    assert events[-1].suggestions == ("More",)
    assert subject.open_replies() == 0


async def test_closing_early_releases_the_request(subject: Subject) -> None:
    events = subject.backend.complete(ask(), heartbeat=3600)
    first = await anext(events)
    assert isinstance(first, TextDelta)
    await events.aclose()
    assert subject.open_replies() == 0
    again = [event async for event in subject.backend.complete(ask(), heartbeat=3600)]
    assert isinstance(again[-1], Finished)


async def test_not_ready_refuses_before_anything_happens(subject: Subject) -> None:
    assert subject.unready is not None
    with subject.unready:
        assert subject.backend.state is BridgeState.DEGRADED
        with pytest.raises(NotReady) as caught:
            await anext(subject.backend.complete(ask(), heartbeat=3600))
        assert not caught.value.posted
        assert caught.value.retry_after


async def test_shutdown_ends_an_open_reply_and_refuses_new_ones(subject: Subject) -> None:
    subject.hold_replies.set()
    events = subject.backend.complete(ask(), heartbeat=3600)
    waiting = asyncio.ensure_future(anext(events))
    async with asyncio.timeout(10):
        await subject.prompted.wait()
    subject.backend.begin_shutdown()
    with pytest.raises(ServerShutdown) as caught:
        await waiting
    assert caught.value.posted
    assert subject.backend.state is BridgeState.STOPPING
    assert subject.backend.status().state is BridgeState.STOPPING
    with pytest.raises(NotReady):
        await anext(subject.backend.complete(ask(), heartbeat=3600))


async def test_unknown_ids_are_refused_without_echoing_them(subject: Subject) -> None:
    backend = subject.backend
    assert list(await backend.conversations("a caller with none")) == []
    with pytest.raises(UnknownConversation) as conversation:
        await backend.forget_conversation("a caller with none", "conv-secret-id")
    with pytest.raises(UnknownToken) as token:
        backend.set_token_enabled("0000000000000000", False)
    with pytest.raises(UnknownToken):
        await backend.check_token("0000000000000000")
    assert "conv-secret-id" not in conversation.value.message
    assert "0000000000000000" not in token.value.message
    assert (conversation.value.code, token.value.code) == ("conversation_not_found", "token_not_found")
