"""The gateway connection: logs in, runs the listener, and is the one writer of `GatewayState`."""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp
import discord
import yarl

from bot.gateway_state import GatewayState
from bot.interface import BridgeState, StartupError
from bot.listener import Listener
from bot.payloads import MessagePayload, coze_message, is_blank
from bot.rest import Credential, DiscordRest, RestError
from bot.router import ReplyRouter

log = logging.getLogger(__name__)


def _point_discordpy_at(api_base: str, gateway_url: str) -> None:
    # discord.py reads both from class attributes, so they apply process-wide; a plain Client
    # never asks /gateway/bot itself and falls back to DEFAULT_GATEWAY after a refused RESUME.
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class Gateway:
    """Turns the listener's events into the bridge's gateway state, and its payloads into replies."""

    def __init__(
        self,
        *,
        guild_id: int,
        coze_bot_ids: frozenset[int],
        router: ReplyRouter,
        state: GatewayState,
        connector: aiohttp.BaseConnector | None = None,
        gateway_url: str | None = None,
    ) -> None:
        self.state = state
        self._guild_id = guild_id
        self._router = router
        # Called when a new gateway session replaces one that could not be resumed.
        self.on_resync: Callable[[], None] = lambda: None
        self._guild_seen = False
        self._warned_empty = False
        # A configured gateway URL (a reverse proxy in front of Discord) replaces /gateway/bot's answer.
        self._gateway_url = gateway_url
        self.listener = Listener(
            coze_bot_ids=coze_bot_ids,
            sink=self._coze_payload,
            lifecycle=self._event,
            connector=connector,
            pinned_gateway=None if gateway_url is None else yarl.URL(gateway_url),
        )

    async def login(self, rest: DiscordRest, bot: Credential, token: str) -> None:
        try:
            _point_discordpy_at(rest.api_base, self._gateway_url or await rest.gateway_url(bot))
            await self.listener.login(token)
        except (RestError, discord.LoginFailure) as exc:
            raise StartupError(f"cannot log in to Discord at {rest.api_base}: {exc}") from None
        self.state.set(BridgeState.CONNECTING)

    async def run(self) -> None:
        try:
            await self.listener.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired:
            self.state.set(BridgeState.DEGRADED)
            log.error(
                "enable the Message Content intent for the listening bot in the Discord developer portal"
            )
        except (discord.GatewayNotFound, discord.ConnectionClosed) as exc:
            self.state.set(BridgeState.DEGRADED)
            log.error("the Discord gateway connection ended: %s", exc)

    async def close(self) -> None:
        self.state.set(BridgeState.STOPPING)
        await self.listener.close()

    def _event(self, event: str, guild_id: int | None) -> None:
        current = self.state.state
        if event in ("guild_available", "guild_join"):
            if guild_id != self._guild_id:
                return
            # on_ready comes ~2 s after the last GUILD_CREATE; our own guild is all we need.
            self.state.set(BridgeState.READY)
            if self._guild_seen:
                # A new session (RESUME was refused): events sent in the gap are gone for good.
                self.on_resync()
            self._guild_seen = True
        elif event == "resumed" or (event == "ready" and current is BridgeState.CONNECTING):
            # discord.py sends "ready" ~2 s after its session's last GUILD_CREATE, even when that
            # session has dropped meanwhile: it must not mark a gateway that is away as ready.
            self.state.set(BridgeState.READY)
        elif event == "disconnect" and current is BridgeState.READY:
            self.state.set(BridgeState.DEGRADED)

    def _coze_payload(self, payload: MessagePayload) -> None:
        if is_blank(payload) and not self._warned_empty:
            self._warned_empty = True
            log.warning(
                "the Coze bot's message arrived empty: enable the Message Content intent for the "
                "listening bot in the Discord developer portal"
            )
        self._router.deliver(coze_message(payload))
