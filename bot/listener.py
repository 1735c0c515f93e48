"""The discord.py bot that listens on the gateway for the Coze bot's messages (transport only).

It hands Coze's payloads to a sink and reports the connection's lifecycle to a hook; what those
mean for the bridge is decided by `bot.gateway`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import discord
import yarl
from discord.state import ConnectionState

from bot.payloads import MessagePayload

log = logging.getLogger(__name__)

# The gateway events the connection code follows; the int is the guild's id, where it has one.
LifecycleHook = Callable[[str, int | None], None]


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
    # Where RESUMEs go too, instead of READY's resume_gateway_url (Discord's own host, which a
    # reverse proxy in front of Discord is there to avoid).
    pinned_gateway: yarl.URL | None = None

    def parse_ready(self, data: Any) -> None:
        super().parse_ready(data)
        if self.pinned_gateway is not None:
            # The websocket set `gateway` from READY just before calling this parser.
            self._get_websocket().gateway = self.pinned_gateway

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
        coze_bot_ids: frozenset[int],
        sink: Callable[[MessagePayload], None],
        lifecycle: LifecycleHook,
        connector: aiohttp.BaseConnector | None = None,
        pinned_gateway: yarl.URL | None = None,
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
            # None: discord.py's own; a proxy's carries REST and the gateway websocket alike.
            connector=connector,
        )
        self._lifecycle = lifecycle
        state = self._connection
        assert isinstance(state, _CozeFirstState)
        state.coze_bot_ids = coze_bot_ids
        state.coze_sink = sink
        state.pinned_gateway = pinned_gateway

    def follow(self, coze_bot_ids: frozenset[int]) -> None:
        """Pass these Coze bots' messages to the sink from now on (a reload changed the models)."""
        state = self._connection
        assert isinstance(state, _CozeFirstState)
        state.coze_bot_ids = coze_bot_ids

    def _get_state(self, **options: Any) -> ConnectionState[Any]:
        return _CozeFirstState(
            dispatch=self.dispatch, handlers=self._handlers, hooks=self._hooks, http=self.http, **options
        )

    def dispatch(self, event: str, /, *args: Any, **kwargs: Any) -> None:
        if event == "socket_event_type":
            return  # sent for every gateway event; nothing listens, and at a thousand streams it adds up
        if event in ("guild_available", "guild_join"):
            self._lifecycle(event, args[0].id)
        elif event in ("ready", "resumed", "disconnect"):
            self._lifecycle(event, None)
        super().dispatch(event, *args, **kwargs)

    def is_text_channel(self, channel_id: int) -> bool:
        """A text channel the bot can see (where threads for prompts are made)."""
        return isinstance(self.get_channel(channel_id), discord.TextChannel)
