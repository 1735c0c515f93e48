"""SimulatedDiscord: REST, gateway and a scripted Coze bot on one local aiohttp server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

from aiohttp import web

from simdiscord import payloads
from simdiscord.coze import CozeBot, PromptInfo, Script, default_script
from simdiscord.gateway import Gateway
from simdiscord.ratelimit import RateLimits
from simdiscord.rest import Rest, SeenRequest
from simdiscord.world import GATEWAY_MESSAGE_CONTENT, LINK_SECONDS, Account, Message, Overwrite, World


class SimulatedDiscord:
    """A local Discord for tests, benchmarks and the demo; a real discord.py client connects to it.

    `pace` scales the default script's delays (1.0 reads like a real Coze bot); attachment and
    CDN links stop working `link_seconds` after they were made, as Discord's do.
    """

    def __init__(
        self, *, pace: float = 0.05, coze_ignores_bots: bool = True, link_seconds: int = LINK_SECONDS
    ) -> None:
        self.world = World()
        self.world.link_seconds = link_seconds
        self.gateway = Gateway(self.world, lambda: self.gateway_url)
        self.coze = CozeBot(self.world, self._emit_message, self._spawn)
        self.coze.script = default_script(pace)
        self.coze.ignores_bots = coze_ignores_bots
        self.rest = Rest(
            self.world,
            gateway_url=lambda: self.gateway_url,
            on_message=self._posted,
            on_channel=self._emit_channel,
            limits=RateLimits(time.monotonic),
        )
        # Called with a Coze message's text whenever the gateway sends its create or edit (benchmarks).
        self.on_send: Callable[[str], None] | None = None
        # Called with its text when the gateway sends a Coze message carrying components (the end marker).
        self.on_marker: Callable[[str], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        # Uploads of up to 10 attachments of several MiB each.
        app = web.Application(middlewares=[self.rest.middleware], client_max_size=64 * 1024 * 1024)
        self.rest.routes(app)
        app.router.add_get("/gateway", self.gateway.handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self._host, self._port = host, self._runner.addresses[0][1]
        self.world.cdn_base = f"http://{self._host}:{self._port}"

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> SimulatedDiscord:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # Where and who.
    @property
    def api_base(self) -> str:
        return f"http://{self._host}:{self._port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self._host}:{self._port}/gateway"

    @property
    def bot_token(self) -> str:
        return self.world.listener.token

    @property
    def user_tokens(self) -> list[str]:
        return [user.token for user in self.world.users]

    @property
    def guild_id(self) -> int:
        return self.world.guild_id

    @property
    def channel_id(self) -> int:
        return self.world.text_channel.id

    @property
    def coze_bot_id(self) -> int:
        return self.world.coze.id

    def discord_settings(self) -> dict[str, Any]:
        """The bridge's [discord] settings that point it at this simulation."""
        return {
            "bot_token": self.bot_token,
            "guild_id": self.guild_id,
            "coze_bot_id": self.coze_bot_id,
            "channel_id": self.channel_id,
            "user_tokens": self.user_tokens,
            "api_base": self.api_base,
        }

    # What the Coze bot does.
    @property
    def script(self) -> Script:
        return self.coze.script

    @script.setter
    def script(self, script: Script) -> None:
        self.coze.script = script

    @property
    def coze_ignores_bots(self) -> bool:
        return self.coze.ignores_bots

    @coze_ignores_bots.setter
    def coze_ignores_bots(self, value: bool) -> None:
        self.coze.ignores_bots = value

    # More of the world.
    def add_coze_bot(self, name: str) -> int:
        """Another Coze-published bot in the guild; returns its user id."""
        return self.world.add_coze_bot(name).id

    def add_channel(self, name: str, *, type: int = 0) -> int:
        """Another channel in the guild (before the bridge connects): text (0), category (4)...;
        returns its id."""
        return self.world.add_channel(name, type=type).id

    @property
    def listener_id(self) -> int:
        return self.world.listener.id

    # The guild's setup, for the doctor's misconfigurations.
    @property
    def message_content_intent(self) -> bool:
        return bool(self.world.application_flags & GATEWAY_MESSAGE_CONTENT)

    @message_content_intent.setter
    def message_content_intent(self, on: bool) -> None:
        """The Developer Portal's Message Content switch: the application flags show it, and
        while it is off the gateway refuses (4014) a session that asks for the intent."""
        if on:
            self.world.application_flags |= GATEWAY_MESSAGE_CONTENT
        else:
            self.world.application_flags &= ~GATEWAY_MESSAGE_CONTENT

    @property
    def withhold_content(self) -> bool:
        return self.world.withhold_content

    @withhold_content.setter
    def withhold_content(self, on: bool) -> None:
        """Deliver Coze's messages blank even to sessions with the intent (see `World`)."""
        self.world.withhold_content = on

    @property
    def gateway_refusals(self) -> int:
        """How many IDENTIFYs were closed with 4014 (Message Content asked for while switched off)."""
        return self.gateway.refused

    # The CDN's signed links.
    @property
    def link_seconds(self) -> int:
        return self.world.link_seconds

    @link_seconds.setter
    def link_seconds(self, seconds: int) -> None:
        """The life of links made from now on (links already given keep theirs)."""
        self.world.link_seconds = seconds

    def move_cdn_clock(self, seconds: float) -> None:
        """The CDN's clock goes `seconds` ahead: links whose life ends before then answer 404."""
        before = self.world.cdn_clock
        self.world.cdn_clock = lambda: before() + seconds

    def leave_guild(self, account_id: int) -> None:
        """The account is no longer a member of the guild (kicked, or never invited)."""
        self.world.members.discard(account_id)

    def add_role(self, name: str, permissions: int, *, members: Sequence[int] = ()) -> int:
        """A role with these permission bits, given to `members`; returns its id."""
        role = self.world.add_role(name, permissions)
        for account_id in members:
            self.world.member_roles.setdefault(account_id, []).append(role.id)
        return role.id

    def set_everyone_permissions(self, permissions: int) -> None:
        self.world.roles[self.guild_id].permissions = permissions

    def overwrite(self, channel_id: int, target_id: int, *, allow: int = 0, deny: int = 0) -> None:
        """A permission overwrite on the channel for a role (or @everyone: the guild id) or a member."""
        kind = 0 if target_id in self.world.roles else 1
        self.world.channels[channel_id].overwrites.append(Overwrite(target_id, kind, allow, deny))

    def account(self, token: str) -> Account:
        return self.world.by_token(token)

    # Limits and refusals, per account.
    def exhaust(self, token: str, coze_bot_id: int | None = None) -> None:
        """This user's daily quota is used up (for one Coze bot, or all): Coze says so."""
        self.coze.exhausted.add((self.account(token).id, coze_bot_id))

    def creator_limit(self, coze_bot_id: int) -> None:
        """The Coze bot's owner is out of credits: every prompt gets that notice."""
        self.coze.creator_limited.add(coze_bot_id)

    def revoke_token(self, token: str) -> None:
        """Discord answers this user token with 401 from now on."""
        self.world.revoked.add(self.account(token).id)

    def reinstate_token(self, token: str) -> None:
        """A revoked or unverified user token works again (its owner fixed it)."""
        self.world.reinstate(self.account(token).id)

    def require_verification(self, token: str) -> None:
        """Discord refuses this user's messages with 403, code 40002."""
        self.world.unverified.add(self.account(token).id)

    def prompts_by(self, token: str) -> list[PromptInfo]:
        account_id = self.account(token).id
        return [p for p in self.coze.prompts_received if p.author_id == account_id]

    # What happened.
    @property
    def messages(self) -> list[Message]:
        return list(self.world.messages.values())

    @property
    def requests_seen(self) -> list[SeenRequest]:
        """The most recent API calls (up to simdiscord.rest.SEEN_KEPT), oldest first."""
        return list(self.rest.seen)

    def requests_by(self, token: str) -> list[SeenRequest]:
        """The recent API calls that authenticated as the account behind `token`."""
        account_id = self.account(token).id
        return [seen for seen in self.rest.seen if seen.account_id == account_id]

    def forget_requests(self) -> None:
        self.rest.seen.clear()

    @property
    def prompts_received(self) -> list[PromptInfo]:
        return self.coze.prompts_received

    @property
    def prompts_ignored(self) -> list[PromptInfo]:
        return self.coze.prompts_ignored

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds (bound it with asyncio.timeout)."""
        await self.world.wait_for(predicate)

    # Faults.
    def fail_next(
        self,
        method: str,
        route: str,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
        after: bool = False,
    ) -> None:
        self.rest.fail_next(method, route, status, times=times, retry_after=retry_after, after=after)

    def hold(self, method: str, route: str) -> asyncio.Event:
        """Calls of e.g. ("POST", "/channels/{channel_id}/threads") wait until the event is set;
        `held` lists the calls that are waiting or waited."""
        return self.rest.hold(method, route)

    @property
    def held(self) -> list[str]:
        return self.rest.held

    def rate_limit(self, limit: int, *, window: float = 1.0) -> None:
        """Allow `limit` calls per route, channel and token in each `window` seconds; 429 past it."""
        self.rest.limits.limit, self.rest.limits.window = limit, window

    def ack_after_reply(self, on: bool = True) -> None:
        """Answer a prompt's POST only once Coze's reply to it is on the gateway.

        A loaded REST path answers late: the reply may reach the bridge before the prompt's id.
        """
        self.rest.ack_after_reply = on

    @property
    def rate_limited(self) -> int:
        """How many calls were answered 429 for going past `rate_limit`."""
        return self.rest.limits.refused

    async def drop_gateway(self, *, resumable: bool = True) -> None:
        await self.gateway.drop(resumable=resumable)

    # Plumbing.
    async def _posted(self, message: Message) -> None:
        await self._emit_message("MESSAGE_CREATE", message)
        self.coze.on_message(message)

    async def _emit_message(self, kind: str, message: Message) -> None:
        if message.author in self.world.coze_bots:
            if self.on_send is not None:
                self.on_send(message.content)
            if self.on_marker is not None and message.components:
                self.on_marker(message.content)
        withheld = self.world.withhold_content and message.author in self.world.coze_bots
        await self.gateway.dispatch(
            kind,
            lambda with_content: payloads.message(
                self.world, message, with_content=with_content and not withheld
            ),
        )
        if message.reference_id is not None and message.author in self.world.coze_bots:
            self.world.answered.add(message.reference_id)
            self.world.changed()

    async def _emit_channel(self, kind: str, channel_id: int) -> None:
        channel = self.world.channels[channel_id]
        data: dict[str, Any] = payloads.channel(self.world, channel)
        if kind == "THREAD_CREATE":
            data["newly_created"] = True
        await self.gateway.dispatch(kind, lambda with_content: data)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
