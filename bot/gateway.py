"""The gateway connection: logs in, runs the listener, and is the one writer of `GatewayState`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
import discord
import yarl

from bot.gateway_state import GatewayState
from bot.interface import StartupError
from bot.listener import Listener
from bot.payloads import MessagePayload, coze_message, is_blank
from bot.rest import Credential, DiscordRest, RestError
from bot.router import ReplyRouter
from bot.status import MESSAGE_CONTENT_SWITCH, BridgeState, IntentEvidence

log = logging.getLogger(__name__)


def _unreadable(payload: MessagePayload) -> bool:
    """Discord cannot send a message with nothing in it: a blank one had its content withheld."""
    return is_blank(payload) and not payload.get("attachments")


def _point_discordpy_at(api_base: str, gateway_url: str) -> None:
    # discord.py reads both from class attributes, so they apply process-wide; a plain Client
    # never asks /gateway/bot itself and falls back to DEFAULT_GATEWAY after a refused RESUME.
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class Gateway:
    """Turns the listener's events into the bridge's gateway state, and its payloads into replies."""

    # Discord refuses every session (close code 4014) while the portal switch is off; asking
    # again lets an operator's flip of the switch recover without a restart. The wait doubles
    # up to the cap: Discord allows a bot about 1000 IDENTIFYs a day.
    refused_retry_seconds = 30.0
    refused_retry_max_seconds = 600.0

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
        # Set by close(): ends the wait between refused sessions at once.
        self._closing = asyncio.Event()
        # A configured gateway URL (a reverse proxy in front of Discord) replaces /gateway/bot's answer.
        self._gateway_url = gateway_url
        self.listener = Listener(
            coze_bot_ids=coze_bot_ids,
            sink=self._coze_payload,
            lifecycle=self._event,
            connector=connector,
            pinned_gateway=None if gateway_url is None else yarl.URL(gateway_url),
        )

    def set_coze_bot_ids(self, coze_bot_ids: frozenset[int]) -> None:
        """Follow these Coze bots' messages from now on (a reload changed the models)."""
        self.listener.follow(coze_bot_ids)

    async def login(self, rest: DiscordRest, bot: Credential, token: str) -> None:
        try:
            _point_discordpy_at(rest.api_base, self._gateway_url or await rest.gateway_url(bot))
            await self.listener.login(token)
        except (RestError, discord.LoginFailure) as exc:
            raise StartupError(f"cannot log in to Discord at {rest.api_base}: {exc}") from None
        self.state.set(BridgeState.CONNECTING)

    async def run(self) -> None:
        """Keep the listener connected until close(); a refused intent is retried, not final."""
        wait = self.refused_retry_seconds
        while not self._closing.is_set():
            epoch = self.state.epoch
            try:
                await self.listener.connect(reconnect=True)
                return  # the listener was closed
            except discord.PrivilegedIntentsRequired:
                # discord.py raises this without closing the client, so connect() can run again.
                self.state.set(BridgeState.DEGRADED)
                self._intent_missing("gateway_refused")
            except (discord.GatewayNotFound, discord.ConnectionClosed) as exc:
                self.state.set(BridgeState.DEGRADED)
                log.error("the Discord gateway connection ended: %s", exc)
                return
            if self.state.epoch != epoch:
                wait = self.refused_retry_seconds  # a session was accepted in between: a new outage
            if await self._closed_within(wait):
                return
            wait = min(wait * 2, self.refused_retry_max_seconds)
            log.debug("asking the Discord gateway for a session again (Message Content intent refused)")

    async def _closed_within(self, seconds: float) -> bool:
        """Wait `seconds`, or less when close() comes first (then True)."""
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._closing.set()
        self.state.set(BridgeState.STOPPING)
        await self.listener.close()

    def _event(self, event: str, guild_id: int | None) -> None:
        current = self.state.state
        if event in ("guild_available", "guild_join"):
            if guild_id != self._guild_id:
                return
            # on_ready comes ~2 s after the last GUILD_CREATE; our own guild is all we need.
            self.state.set(BridgeState.READY)
            self._session_accepted()
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
        if _unreadable(payload):
            self._intent_missing("blank_messages")
        elif (cleared := self.state.intent_seen_working()) is not None:
            # The switch was flipped on and the session that followed carries content.
            log.info(
                "the Coze bot's messages carry content again: the Message Content intent works "
                "(it was missing since %s)",
                cleared.since.isoformat(timespec="seconds"),
            )
        self._router.deliver(coze_message(payload))

    def _session_accepted(self) -> None:
        """Discord took our IDENTIFY with the Message Content intent in it: the switch is on.

        Only a refusal is disproved: empty messages are cleared by the first one with content.
        """
        known = self.state.intent_missing
        if known is not None and known.seen_as == "gateway_refused":
            self.state.intent_seen_working()
            log.info("Discord accepted the gateway session: the Message Content intent is on again")

    def _intent_missing(self, seen_as: IntentEvidence) -> None:
        if not self.state.intent_seen_missing(seen_as):
            return  # already said: once per outage, not once per message or retry
        if seen_as == "gateway_refused":
            log.error(
                "Discord refused the listening bot's gateway session (close code 4014, disallowed "
                "intents): its Message Content intent is off. Switch it on: %s. The bridge asks "
                "again in %g s, then less often (at least every %g s).",
                MESSAGE_CONTENT_SWITCH,
                self.refused_retry_seconds,
                self.refused_retry_max_seconds,
            )
        else:
            log.error(
                "the Coze bot's messages arrive empty: the listening bot cannot read message content, "
                "so no reply can be read. Switch its Message Content intent on: %s, then restart "
                "the bridge if replies stay empty.",
                MESSAGE_CONTENT_SWITCH,
            )
