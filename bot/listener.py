"""The discord.py bot that listens on the gateway for the Coze bot's messages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import discord
from discord.state import ConnectionState

from bot.detector import ReplySnapshot
from bot.images import image_urls
from bot.interface import BridgeState
from bot.payloads import MessagePayload, button_labels

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CozeMessage:
    """One create or edit of a message by the Coze bot, with where it belongs."""

    channel_id: int
    reference_id: int | None
    snapshot: ReplySnapshot


def coze_message(payload: MessagePayload) -> CozeMessage:
    reference = payload.get("message_reference", {}).get("message_id")
    snapshot = ReplySnapshot(
        message_id=int(payload["id"]),
        content=payload.get("content", ""),
        buttons=button_labels(payload),
        images=image_urls(payload),
    )
    return CozeMessage(
        channel_id=int(payload["channel_id"]),
        reference_id=int(reference) if reference else None,
        snapshot=snapshot,
    )


def intents() -> discord.Intents:
    # Without message_content Discord delivers Coze's replies with empty text: the most common
    # "it answered in Discord but the API got nothing" report.
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_messages = True
    wanted.message_content = True
    return wanted


class _CozeFirstState(ConnectionState[Any]):
    """Reads the Coze bot's messages straight from the gateway payload, and no other message.

    Coze streams by editing one message many times; discord.py would build a Message (with
    its author, member and referenced message) for every edit. We only need a few fields,
    and nothing in the bridge reads anyone else's messages (our own prompts included).
    """

    coze_bot_ids: frozenset[int] = frozenset()
    coze_sink: Callable[[MessagePayload], None] = staticmethod(lambda payload: None)

    def parse_message_create(self, data: Any) -> None:
        self._take_coze(data)

    def parse_message_update(self, data: Any) -> None:
        self._take_coze(data)

    def parse_thread_create(self, data: Any) -> None:
        # The bridge makes a thread per conversation and never looks one up in discord.py's
        # cache, which would otherwise keep every one of them for the life of the process.
        pass

    def _take_coze(self, data: MessagePayload) -> None:
        author = data.get("author")
        if author is not None and int(author["id"]) in self.coze_bot_ids:
            self.coze_sink(data)


class Listener(discord.Client):
    def __init__(
        self,
        *,
        guild_id: int,
        coze_bot_ids: frozenset[int],
        sink: Callable[[CozeMessage], None],
    ) -> None:
        # The bridge never joins voice; discord.py would warn on every start that voice libraries are missing.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        super().__init__(
            intents=intents(),
            # The message cache would keep a copy of every message; we follow raw payloads instead.
            max_messages=None,
            # Without this, on_ready waits ~2 s for member chunks we never use.
            chunk_guilds_at_startup=False,
            member_cache_flags=discord.MemberCacheFlags.none(),
        )
        self.guild_id = guild_id
        self.bridge_state = BridgeState.STARTING
        self.ready = asyncio.Event()
        # Counts the returns to READY, so a waiting reply can tell the gateway was away.
        self.ready_epoch = 0
        self._sink = sink
        # Called when a new gateway session replaces one that could not be resumed.
        self.on_resync: Callable[[], None] = lambda: None
        self._guild_seen = False
        self._warned_empty = False
        state = self._connection
        assert isinstance(state, _CozeFirstState)
        state.coze_bot_ids = coze_bot_ids
        state.coze_sink = self._coze_payload

    def _get_state(self, **options: Any) -> ConnectionState[Any]:
        return _CozeFirstState(
            dispatch=self.dispatch, handlers=self._handlers, hooks=self._hooks, http=self.http, **options
        )

    def dispatch(self, event: str, /, *args: Any, **kwargs: Any) -> None:
        if event in ("guild_available", "guild_join") and args[0].id == self.guild_id:
            # on_ready comes ~2 s after the last GUILD_CREATE; our own guild is all we need.
            self.set_state(BridgeState.READY)
            if self._guild_seen:
                # A new session (RESUME was refused): events sent in the gap are gone for good.
                self.on_resync()
            self._guild_seen = True
        elif event == "resumed" or (event == "ready" and self.bridge_state is BridgeState.CONNECTING):
            # discord.py sends "ready" ~2 s after its session's last GUILD_CREATE, even when that
            # session has dropped meanwhile: it must not mark a gateway that is away as ready.
            self.set_state(BridgeState.READY)
        elif event == "disconnect" and self.bridge_state is BridgeState.READY:
            self.set_state(BridgeState.DEGRADED)
        super().dispatch(event, *args, **kwargs)

    def set_state(self, state: BridgeState) -> None:
        if self.bridge_state is BridgeState.STOPPING:
            return  # the last state: disconnects while closing are expected
        if state is not self.bridge_state:
            log.info("gateway state: %s -> %s", self.bridge_state.value, state.value)
            self.bridge_state = state
            if state is BridgeState.READY:
                self.ready_epoch += 1
        if state is BridgeState.READY:
            self.ready.set()
        else:
            self.ready.clear()

    def _coze_payload(self, payload: MessagePayload) -> None:
        if not (payload.get("content") or payload.get("components") or payload.get("embeds")):
            self._warn_empty()
        self._sink(coze_message(payload))

    def _warn_empty(self) -> None:
        if not self._warned_empty:
            self._warned_empty = True
            log.warning(
                "the Coze bot's message arrived empty: enable the Message Content intent for the "
                "listening bot in the Discord developer portal"
            )
