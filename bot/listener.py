"""The discord.py bot that listens on the gateway for the Coze bot's messages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import discord

from bot.detector import ReplySnapshot
from bot.interface import BridgeState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CozeMessage:
    """One create or edit of a message by the Coze bot, with where it belongs."""

    channel_id: int
    reference_id: int | None
    snapshot: ReplySnapshot


def button_labels(message: discord.Message) -> tuple[str, ...] | None:
    """The labels of the message's buttons, or None when it has no components yet.

    Coze adds its row of follow-up suggestion buttons when it has finished, so components
    appearing at all is the end marker, even when no button has a label.
    """
    if not message.components:
        return None
    labels: list[str] = []
    for row in message.components:
        for child in getattr(row, "children", (row,)):
            label = getattr(child, "label", None)
            if label:
                labels.append(label)
    return tuple(labels)


def intents() -> discord.Intents:
    # Without message_content Discord delivers Coze's replies with empty text: the most common
    # "it answered in Discord but the API got nothing" report.
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_messages = True
    wanted.message_content = True
    return wanted


class Listener(discord.Client):
    def __init__(self, *, guild_id: int, coze_bot_id: int, sink: Callable[[CozeMessage], None]) -> None:
        # The bridge never joins voice; discord.py would warn on every start that voice libraries are missing.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        super().__init__(
            intents=intents(),
            # The message cache would copy every streamed edit; we follow raw events instead.
            max_messages=None,
            # Without this, on_ready waits ~2 s for member chunks we never use.
            chunk_guilds_at_startup=False,
            member_cache_flags=discord.MemberCacheFlags.none(),
        )
        self.guild_id = guild_id
        self.coze_bot_id = coze_bot_id
        self.bridge_state = BridgeState.CONNECTING
        self.ready = asyncio.Event()
        self._sink = sink
        self._warned_empty = False

    def dispatch(self, event: str, /, *args: Any, **kwargs: Any) -> None:
        # dispatch() runs inline in the gateway reader. Handling Coze's messages here, instead of
        # in on_message coroutines, spares a task per event (discord.py schedules one per handler).
        if event == "message":
            self._coze_event(args[0])
        elif event == "raw_message_edit":
            self._coze_event(args[0].message)
        elif event in ("guild_available", "guild_join") and args[0].id == self.guild_id:
            # on_ready comes ~2 s after the last GUILD_CREATE; our own guild is all we need.
            self.set_state(BridgeState.READY)
        elif event in ("ready", "resumed"):
            self.set_state(BridgeState.READY)
        elif event == "disconnect" and self.bridge_state is BridgeState.READY:
            self.set_state(BridgeState.DEGRADED)
        super().dispatch(event, *args, **kwargs)

    def set_state(self, state: BridgeState) -> None:
        if state is not self.bridge_state:
            log.info("gateway state: %s -> %s", self.bridge_state.value, state.value)
            self.bridge_state = state
        if state is BridgeState.READY:
            self.ready.set()
        else:
            self.ready.clear()

    def _coze_event(self, message: discord.Message) -> None:
        if message.author.id != self.coze_bot_id:
            return
        buttons = button_labels(message)
        if not (message.content or buttons or message.embeds or message.attachments):
            self._warn_empty()
        reference = message.reference.message_id if message.reference else None
        snapshot = ReplySnapshot(message_id=message.id, content=message.content, buttons=buttons)
        self._sink(CozeMessage(channel_id=message.channel.id, reference_id=reference, snapshot=snapshot))

    def _warn_empty(self) -> None:
        if not self._warned_empty:
            self._warned_empty = True
            log.warning(
                "the Coze bot's message arrived empty: enable the Message Content intent for the "
                "listening bot in the Discord developer portal"
            )
