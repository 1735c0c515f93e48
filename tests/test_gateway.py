"""The connection code: discord.py's lifecycle events as the bridge's one gateway state."""

from __future__ import annotations

import logging

import pytest

from bot.gateway import Gateway
from bot.gateway_state import GatewayState
from bot.interface import BridgeState
from bot.payloads import MessagePayload
from bot.router import ReplyRouter

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


async def test_returning_wakes_the_waiting_and_empty_payloads_warn_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made, _ = gateway()
    returns: list[int] = []
    made.state.on_return(lambda: returns.append(made.state.epoch))
    made._event("guild_available", GUILD)
    made._event("disconnect", None)
    made._event("resumed", None)
    assert returns == [1, 2]
    blank: MessagePayload = {"id": "5", "channel_id": "6", "author": {"id": str(COZE)}, "content": ""}
    with caplog.at_level(logging.WARNING):
        made._coze_payload(blank)
        made._coze_payload(blank)
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "Message Content intent" in caplog.records[0].message
