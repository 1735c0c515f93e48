"""The doctor's setup checks against Discord's REST API: listener bot, channels, user tokens.

Each check yields one `Line`; a FAIL says what to switch on or grant, and where. Tokens are
only ever named by label and fingerprint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot import permissions
from bot.config import BackendConfig, ModelSettings
from bot.rest import Credential, DiscordRest, RestError
from bot.token_pool import fingerprint

# Application flags: the Message Content intent, switched on (verified apps get LIMITED).
GATEWAY_MESSAGE_CONTENT = 1 << 18
GATEWAY_MESSAGE_CONTENT_LIMITED = 1 << 19
INTENT_FIX = "turn on Message Content Intent under Bot → Privileged Gateway Intents in the Developer Portal"
CHANNEL_TYPES = {0: "text channel", 2: "voice channel", 4: "category", 5: "announcement channel"}
CHANNEL_TYPES |= {11: "thread", 12: "private thread", 13: "stage channel", 15: "forum"}
USER_PERMISSIONS = ("view_channel", "send_messages_in_threads")


@dataclass(frozen=True, slots=True)
class Line:
    status: str  # "ok", "warn" (works, but worth knowing), "FAIL", or "skip" (an earlier FAIL)
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status:<4}  {self.check}: {self.detail}"


@dataclass
class Findings:
    lines: list[Line] = field(default_factory=list)
    guild: permissions.GuildView | None = None  # known once the listener can read the guild
    channels: dict[int, Mapping[str, Any]] = field(default_factory=dict)  # text channels found
    healthy: list[tuple[Credential, int]] = field(default_factory=list)  # user tokens, their ids

    def add(self, status: str, check: str, detail: str) -> bool:
        self.lines.append(Line(status, check, detail))
        return status == "ok"


def _why(exc: RestError) -> str:
    if exc.status is None:
        return str(exc)
    return f"{exc.status}" + (f", code {exc.code}" if exc.code is not None else "")


class SetupChecks:
    def __init__(self, config: BackendConfig, rest: DiscordRest) -> None:
        self.config = config
        self.rest = rest
        self.bot = Credential(config.discord.bot_token.get_secret_value(), is_bot=True, label="listener bot")
        self.guild_id = config.discord.guild_id
        self.found = Findings()
        self._listener_roles: list[int] = []

    async def run(self) -> Findings:
        listener_id = await self.listener()
        for route in self.config.model_routes:
            await self.model(route, listener_id)
        await self.user_tokens()
        return self.found

    async def _member(self, user_id: int) -> Mapping[str, Any] | None:
        try:
            member: Mapping[str, Any] = await self.rest.request(
                "GET", f"/guilds/{self.guild_id}/members/{user_id}", self.bot
            )
        except RestError as exc:
            if exc.status == 404:
                return None
            raise
        return member

    async def listener(self) -> int | None:
        add, check = self.found.add, "listener bot"
        try:
            me = await self.rest.request("GET", "/users/@me", self.bot)
        except RestError as exc:
            fix = "copy it again (Bot → Reset Token in the Developer Portal) into discord.bot_token"
            add("FAIL", check, f"the token does not log in ({_why(exc)}): {fix}")
            return None
        if not me.get("bot"):
            add("FAIL", check, "discord.bot_token is not a bot's token")
            return None
        add("ok", check, f"logs in as {me.get('username')} ({me['id']})")
        app = await self.rest.request("GET", "/oauth2/applications/@me", self.bot)
        intent = int(app.get("flags") or 0) & (GATEWAY_MESSAGE_CONTENT | GATEWAY_MESSAGE_CONTENT_LIMITED)
        add("ok" if intent else "FAIL", "message content intent", "on" if intent else INTENT_FIX)
        check = f"listener in guild {self.guild_id}"
        try:
            member = await self._member(int(me["id"]))
            if member is not None:
                guild = await self.rest.request("GET", f"/guilds/{self.guild_id}", self.bot)
                roles = await self.rest.request("GET", f"/guilds/{self.guild_id}/roles", self.bot)
        except RestError as exc:
            if exc.status not in (403, 404):
                raise
            member = None  # Missing Access or Unknown Guild: the bot is not in it
        if member is None:
            invite = "invite the bot with an OAuth2 URL (scope bot), or check discord.guild_id"
            add("FAIL", check, f"the listener bot is not a member: {invite}")
            return None
        self.found.guild = permissions.GuildView.from_payloads(guild, roles)
        self._listener_roles = [int(r) for r in member.get("roles") or []]
        add("ok", check, f"member of {guild.get('name')}")
        return int(me["id"])

    def _perms(
        self, user_id: int, roles: list[int], channel: Mapping[str, Any], needed: tuple[str, ...]
    ) -> str:
        """'' when the member has every permission in `needed` there, else what lacks and why."""
        guild = self.found.guild
        assert guild is not None
        overwrites = permissions.overwrites(channel)
        have = permissions.effective(guild, user_id, roles, overwrites)
        lacking = permissions.missing(have, needed)
        return "; ".join(
            f"lacks {permissions.UI_NAMES[name]} ({permissions.denied_by(guild, user_id, roles, overwrites, name)})"
            for name in lacking
        )

    def listener_needs(self) -> tuple[str, ...]:
        create = "create_private_threads" if self.config.discord.private_threads else "create_public_threads"
        return ("view_channel", "read_message_history", create, "send_messages_in_threads", "manage_threads")

    async def model(self, route: ModelSettings, listener_id: int | None) -> None:
        add, check = self.found.add, f"model {route.name}"
        if listener_id is None or self.found.guild is None:
            add("skip", f"{check}: channel {route.channel_id}", "needs the listener bot in the guild")
            return
        try:
            channel = await self.rest.request("GET", f"/channels/{route.channel_id}", self.bot)
        except RestError as exc:
            add(
                "FAIL",
                f"{check}: channel",
                f"channel {route.channel_id} not found ({_why(exc)}): check channel_id",
            )
            return
        name, kind = f"#{channel.get('name')}", int(channel.get("type", -1))
        if str(channel.get("guild_id")) != str(self.guild_id):
            add(
                "FAIL",
                f"{check}: channel",
                f"{name} is in another guild: pick a channel of guild {self.guild_id}",
            )
            return
        if kind != 0:
            what = CHANNEL_TYPES.get(kind, f"type {kind}")
            add("FAIL", f"{check}: channel", f"{name} is a {what}, not a text channel: pick a text channel")
            return
        self.found.channels[route.channel_id] = channel
        add("ok", f"{check}: channel", f"{name} is a text channel of the guild")
        lack = self._perms(listener_id, self._listener_roles, channel, self.listener_needs())
        where = "grant it to the bot's role in Server Settings → Roles, or in the channel's Permissions"
        add(
            "FAIL" if lack else "ok",
            f"{check}: listener permissions in {name}",
            f"{lack}: {where}" if lack else "all there",
        )
        await self.coze_bot(route, channel, f"{check}: Coze bot {route.coze_bot_id}")

    async def coze_bot(self, route: ModelSettings, channel: Mapping[str, Any], check: str) -> None:
        member = await self._member(route.coze_bot_id)
        if member is None:
            fix = "add it to the server from Coze's Discord publish settings, or check coze_bot_id"
            self.found.add("FAIL", check, f"not a member of the guild: {fix}")
            return
        if not member.get("user", {}).get("bot"):
            self.found.add("FAIL", check, "is not a bot: coze_bot_id must be the Coze bot's user id")
            return
        roles = [int(r) for r in member.get("roles") or []]
        lack = self._perms(route.coze_bot_id, roles, channel, ("view_channel", "send_messages_in_threads"))
        self.found.add("FAIL" if lack else "ok", check, lack or "a member, can view the channel")

    async def user_tokens(self) -> None:
        if not self.config.discord.user_tokens:
            self.found.add(
                "warn", "user tokens", "none set: prompts go out as the listener bot, which Coze ignores"
            )
        for number, entry in enumerate(self.config.discord.user_tokens, start=1):
            token = entry.token.get_secret_value()
            label = f"{entry.label or f'user token #{number}'} ({fingerprint(token)})"
            await self.user_token(Credential(token, is_bot=False, label=label))

    async def user_token(self, credential: Credential) -> None:
        add, check = self.found.add, credential.label
        try:
            me = await self.rest.request("GET", "/users/@me", credential)
        except RestError as exc:
            if exc.status == 401:
                add("FAIL", check, "revoked or wrong: 401: log in again and copy a fresh token, or remove it")
            elif exc.status == 403:
                verify = "the account must verify its email or phone" if exc.code == 40002 else "refused"
                add("FAIL", check, f"forbidden: 403 ({verify}, code {exc.code})")
            else:
                add("FAIL", check, f"cannot be checked ({_why(exc)})")
            return
        if me.get("bot"):
            add("FAIL", check, "is a bot's token: user_tokens must be user accounts' tokens")
            return
        user_id, who = int(me["id"]), f"{me.get('username')} ({me['id']})"
        if self.found.guild is None:
            add("skip", check, f"valid, {who}; its guild membership needs the listener bot in the guild")
            return
        member = await self._member(user_id)
        if member is None:
            add("FAIL", check, f"{who} is not a member of guild {self.guild_id}: join it with an invite")
            return
        roles = [int(r) for r in member.get("roles") or []]
        lacks = [
            f"#{channel.get('name')}: {lack}"
            for channel in self.found.channels.values()
            if (lack := self._perms(user_id, roles, channel, USER_PERMISSIONS))
        ]
        if lacks:
            add("FAIL", check, f"{who} " + "; ".join(lacks))
            return
        add("ok", check, f"{who}, a member; can view the channels and post in threads")
        self.found.healthy.append((credential, user_id))
