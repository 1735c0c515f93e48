"""The connection code: discord.py's lifecycle events as the bridge's one gateway state."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import discord
import pytest

from bot.gateway import Gateway
from bot.gateway_state import GatewayState
from bot.payloads import MessagePayload
from bot.router import ReplyRouter
from bot.status import MESSAGE_CONTENT_SWITCH, BridgeState, IntentMissing

GUILD, COZE = 1, 2


def gateway() -> tuple[Gateway, list[str]]:
    made = Gateway(guild_id=GUILD, coze_bot_ids=frozenset({COZE}), router=ReplyRouter(), state=GatewayState())
    resyncs: list[str] = []
    made.on_resync = lambda: resyncs.append("resync")
    made.state.set(BridgeState.CONNECTING)
    return made, resyncs


async def test_our_guild_makes_it_ready_and_a_new_session_resyncs() -> None:
    made, resyncs = gateway()
    lifecycle = made._event
    lifecycle("guild_available", 99)
    assert made.state.state is BridgeState.CONNECTING, "another guild says nothing about ours"
    lifecycle("guild_available", GUILD)
    assert (made.state.state, made.state.epoch, resyncs) == (BridgeState.READY, 1, [])
    lifecycle("disconnect", None)
    assert made.state.state is BridgeState.DEGRADED
    lifecycle("ready", None)
    assert made.state.state is BridgeState.DEGRADED, "a late 'ready' of a dropped session proves nothing"
    lifecycle("guild_available", GUILD)  # RESUME was refused: a new session
    assert (made.state.state, made.state.epoch, resyncs) == (BridgeState.READY, 2, ["resync"])
    lifecycle("disconnect", None)
    lifecycle("resumed", None)
    assert (made.state.state, made.state.epoch) == (BridgeState.READY, 3)


async def test_closing_is_final() -> None:
    made, _ = gateway()
    made._event("guild_available", GUILD)
    await made.close()
    made._event("resumed", None)
    assert made.state.state is BridgeState.STOPPING


async def test_returning_wakes_the_waiting() -> None:
    made, _ = gateway()
    returns: list[int] = []
    made.state.on_return(lambda: returns.append(made.state.epoch))
    made._event("guild_available", GUILD)
    made._event("disconnect", None)
    made._event("resumed", None)
    assert returns == [1, 2]


def payload(content: str = "", **more: object) -> MessagePayload:
    made: MessagePayload = {"id": "5", "channel_id": "6", "author": {"id": str(COZE)}, "content": content}
    made.update(more)  # type: ignore[typeddict-item]
    return made


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_blank_payloads_make_the_fact_and_one_error_until_content_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made, _ = gateway()
    made._event("guild_available", GUILD)
    with caplog.at_level(logging.INFO):
        made._coze_payload(payload(attachments=[{"id": "1", "url": "u"}]))
        assert made.state.intent_missing is None, "an attachment alone is a message with something in it"
        for _ in range(3):
            made._coze_payload(payload())
        missing = made.state.intent_missing
        assert missing is not None
        assert missing.seen_as == "blank_messages"
        assert len(errors(caplog)) == 1
        assert MESSAGE_CONTENT_SWITCH in errors(caplog)[0]
        made._event("disconnect", None)
        made._event("guild_available", GUILD)
        assert made.state.intent_missing is missing, "a new session alone does not prove content comes"
        made._coze_payload(payload("text again"))
    assert made.state.intent_missing is None
    assert "carry content again" in caplog.text
    assert made.state.state is BridgeState.READY, "the fact is apart from the connection state"


async def test_a_refused_session_is_retried_until_the_switch_is_on(caplog: pytest.LogCaptureFixture) -> None:
    made, _ = gateway()
    made.refused_retry_seconds, made.refused_retry_max_seconds = 1, 3
    waits: list[float] = []

    async def no_wait(seconds: float) -> bool:
        waits.append(seconds)
        return False

    # Refused three times, accepted, refused again (the switch turned off), then accepted.
    script = iter(["refused", "refused", "refused", "accepted", "refused", "stays"])
    settled = asyncio.Event()

    async def connect(*, reconnect: bool) -> None:
        step = next(script)
        if step != "refused":
            made._event("guild_available", GUILD)  # Discord took the IDENTIFY
        if step == "stays":
            settled.set()
            await made._closing.wait()
            return  # connect() returns once the client is closed
        raise discord.PrivilegedIntentsRequired(None)

    made.listener.connect = connect  # type: ignore[method-assign]
    made._closed_within = no_wait  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO):
        task = asyncio.create_task(made.run())
        async with asyncio.timeout(5):
            await settled.wait()
        assert made.state.state is BridgeState.READY
        assert made.state.intent_missing is None
        assert waits == [1, 2, 3, 1, 2], "the wait doubles to its cap, and starts over after a session"
        assert len(errors(caplog)) == 2, "one error per outage, not one per attempt"
        assert "4014" in errors(caplog)[0]
        assert MESSAGE_CONTENT_SWITCH in errors(caplog)[0]
        assert caplog.text.count("Message Content intent is on again") == 2
        await made.close()
        async with asyncio.timeout(5):
            await task


async def test_closing_ends_the_wait_between_refused_sessions() -> None:
    made, _ = gateway()
    made.refused_retry_seconds = 3600

    async def refused(*, reconnect: bool) -> None:
        raise discord.PrivilegedIntentsRequired(None)

    waiting = asyncio.Event()
    wait = made._closed_within

    async def observed(seconds: float) -> bool:
        waiting.set()
        return await wait(seconds)

    made.listener.connect = refused  # type: ignore[method-assign]
    made._closed_within = observed  # type: ignore[method-assign]
    task = asyncio.create_task(made.run())
    async with asyncio.timeout(5):
        await waiting.wait()
    missing = made.state.intent_missing
    assert missing is not None
    assert (made.state.state, missing.seen_as) == (BridgeState.DEGRADED, "gateway_refused")
    await made.close()
    async with asyncio.timeout(5):
        await task


def test_the_intent_fact_keeps_its_first_sighting() -> None:
    now = [1_700_000_000.0]
    state = GatewayState(clock=lambda: now[0])
    assert state.intent_missing is None
    assert state.intent_seen_working() is None
    assert state.intent_seen_missing("blank_messages") is True
    now[0] += 60
    assert state.intent_seen_missing("blank_messages") is False
    assert state.intent_seen_missing("gateway_refused") is False, "news only once per outage"
    missing = state.intent_missing
    assert missing == IntentMissing(datetime.fromtimestamp(1_700_000_000, UTC), "gateway_refused")
    assert state.intent_seen_working() == missing
    assert state.intent_missing is None
    assert state.intent_seen_missing("gateway_refused") is True, "a new outage is news again"
    assert state.intent_missing is not None
    assert state.intent_missing.since == datetime.fromtimestamp(now[0], UTC)
