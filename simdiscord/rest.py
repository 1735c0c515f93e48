"""The REST side of the simulated Discord (the few routes the bridge and discord.py use)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web
from multidict import CIMultiDict, CIMultiDictProxy

from simdiscord import payloads
from simdiscord.ratelimit import RateLimits
from simdiscord.world import Account, Attachment, Message, World

MESSAGE_LIMIT = 2000
MAX_ATTACHMENTS = 10
USER_MENTION = re.compile(r"<@!?(\d+)>")
ACCOUNT = web.RequestKey("account", Account)
# The most recent API calls kept in `Rest.seen`: a benchmark makes thousands.
SEEN_KEPT = 2000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses a body as JSON only when Content-Type is exactly application/json;
    # aiohttp's json_response appends "; charset=utf-8".
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def error(status: int, message: str, code: int = 0) -> web.Response:
    return reply({"message": message, "code": code}, status)


def rate_limited(retry_after: float, headers: dict[str, str] | None = None) -> web.Response:
    body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
    # discord.py treats a 429 without a Via header as a Cloudflare ban.
    return reply(body, 429, {"Retry-After": f"{retry_after:.3f}", "Via": "1.1 google", **(headers or {})})


@dataclass
class Fault:
    status: int
    retry_after: float | None = None
    after: bool = False  # the call is carried out, then its answer is lost


@dataclass(frozen=True)
class SeenRequest:
    """One API call as it arrived: its headers (without Authorization, so no token is ever
    shown), the account it authenticated as, and the address it came from."""

    method: str
    path: str
    route: str
    headers: CIMultiDictProxy[str]
    account_id: int | None
    peer: tuple[str, int] | None


def _route(request: web.Request) -> str:
    """The route's template without the API version, e.g. "/channels/{channel_id}/messages"."""
    resource = request.match_info.route.resource
    return re.sub(r"^/api/v\d+", "", resource.canonical if resource else "")


class Rest:
    def __init__(
        self,
        world: World,
        *,
        gateway_url: Callable[[], str],
        on_message: Callable[[Message], Awaitable[None]],
        on_channel: Callable[[str, int], Awaitable[None]],
        limits: RateLimits,
    ) -> None:
        self.world = world
        self.limits = limits
        self._gateway_url = gateway_url
        self._on_message = on_message
        self._on_channel = on_channel
        self.faults: dict[str, list[Fault]] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.held: list[str] = []  # the calls that reached a gate, in order
        self.ack_after_reply = False
        # The most POSTs this Discord was answering at once.
        self.posts_in_flight = 0
        self.peak_posts_in_flight = 0
        self.seen: deque[SeenRequest] = deque(maxlen=SEEN_KEPT)

    def routes(self, app: web.Application) -> None:
        for version in ("v9", "v10"):
            base = f"/api/{version}"
            app.router.add_get(f"{base}/gateway", self.gateway)
            app.router.add_get(f"{base}/gateway/bot", self.gateway)
            app.router.add_get(f"{base}/users/@me", self.me)
            app.router.add_get(f"{base}/users/@me/guilds", self.my_guilds)
            app.router.add_get(f"{base}/oauth2/applications/@me", self.application)
            app.router.add_get(f"{base}/applications/@me", self.application)
            app.router.add_get(f"{base}/guilds/{{guild_id}}", self.get_guild)
            app.router.add_get(f"{base}/guilds/{{guild_id}}/roles", self.guild_roles)
            app.router.add_get(f"{base}/guilds/{{guild_id}}/members/{{user_id}}", self.guild_member)
            app.router.add_get(f"{base}/channels/{{channel_id}}", self.get_channel)
            app.router.add_patch(f"{base}/channels/{{channel_id}}", self.patch_channel)
            app.router.add_post(f"{base}/channels/{{channel_id}}/threads", self.create_thread)
            app.router.add_put(
                f"{base}/channels/{{channel_id}}/thread-members/{{user_id}}", self.add_thread_member
            )
            app.router.add_post(f"{base}/channels/{{channel_id}}/messages", self.create_message)
            app.router.add_get(f"{base}/channels/{{channel_id}}/messages", self.list_messages)
            app.router.add_get(f"{base}/channels/{{channel_id}}/messages/{{message_id}}", self.get_message)
        app.router.add_get(r"/attachments/{channel_id}/{attachment_id:\d+}/{filename}", self.get_attachment)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        key = f"{request.method} {_route(request)}"
        self._record(request)
        if (gate := self.gates.get(key)) is not None:
            self.held.append(key)
            self.world.changed()
            await gate.wait()  # Discord is slow to answer this call
        fault = self._take_fault(key)
        if fault is not None and fault.after:
            await self._handled(request, handler)
            if request.transport is not None:
                request.transport.abort()  # done, but the caller never hears of it
            return web.Response(status=499)
        if fault is not None:
            if fault.status == 0 and request.transport is not None:
                # A network failure: the connection dies without an answer.
                request.transport.abort()
                return web.Response(status=499)
            if fault.status == 429:
                return rate_limited(fault.retry_after or 0.1)
            return error(fault.status, "Simulated failure")
        return await self._handled(request, handler)

    async def _handled(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.endswith("/gateway"):
            return await handler(request)
        token = request.headers.get("Authorization", "")
        account = self.world.authenticate(token)
        if account is None:
            return error(401, "401: Unauthorized")
        request[ACCOUNT] = account
        verdict = self.limits.check(
            token, f"{request.method} {_route(request)}", request.match_info.get("channel_id", "")
        )
        if not verdict.allowed:
            return rate_limited(verdict.retry_after, verdict.headers)
        posting = int(request.method == "POST")
        self.posts_in_flight += posting
        self.peak_posts_in_flight = max(self.peak_posts_in_flight, self.posts_in_flight)
        try:
            response = await handler(request)
        finally:
            self.posts_in_flight -= posting
        response.headers.update(verdict.headers)
        return response

    def _record(self, request: web.Request) -> None:
        headers = CIMultiDict(request.headers)
        account = self.world.authenticate(headers.popall("Authorization", [""])[0])
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        self.seen.append(
            SeenRequest(
                method=request.method,
                path=request.path_qs,
                route=_route(request),
                headers=CIMultiDictProxy(headers),
                account_id=account.id if account is not None else None,
                peer=(peer[0], peer[1]) if peer else None,
            )
        )

    def hold(self, method: str, route: str) -> asyncio.Event:
        """Calls of e.g. ("POST", "/channels/{channel_id}/threads") wait until the event is set."""
        gate = self.gates[f"{method} {route}"] = asyncio.Event()
        return gate

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
        """Make the next `times` calls of e.g. ("POST", "/channels/{channel_id}/messages") fail.

        Status 0 drops the connection without an answer, like a network failure; with `after`
        the call is carried out first (the message exists, its id never arrives).
        """
        fault = Fault(status, retry_after, after)
        self.faults.setdefault(f"{method} {route}", []).extend([fault] * times)

    def _take_fault(self, key: str) -> Fault | None:
        queue = self.faults.get(key)
        return queue.pop(0) if queue else None

    async def gateway(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return reply({"url": self._gateway_url(), "shards": 1, "session_start_limit": limit})

    async def me(self, request: web.Request) -> web.Response:
        return reply(payloads.user(request[ACCOUNT]))

    async def application(self, request: web.Request) -> web.Response:
        return reply(payloads.application(self.world))

    async def my_guilds(self, request: web.Request) -> web.Response:
        joined = request[ACCOUNT].id in self.world.members
        return reply([payloads.partial_guild(self.world)] if joined else [])

    def _guild_refusal(self, request: web.Request) -> web.Response | None:
        """Discord's answer when the guild is unknown, or the caller is not one of its members."""
        if request.match_info["guild_id"] != str(self.world.guild_id):
            return error(404, "Unknown Guild", 10004)
        if request[ACCOUNT].id not in self.world.members:
            return error(403, "Missing Access", 50001)
        return None

    async def get_guild(self, request: web.Request) -> web.Response:
        return self._guild_refusal(request) or reply(payloads.guild(self.world))

    async def guild_roles(self, request: web.Request) -> web.Response:
        refusal = self._guild_refusal(request)
        return refusal or reply([payloads.role(r) for r in self.world.roles.values()])

    async def guild_member(self, request: web.Request) -> web.Response:
        if (refusal := self._guild_refusal(request)) is not None:
            return refusal
        account = self.world.accounts.get(int(request.match_info["user_id"]))
        if account is None or account.id not in self.world.members:
            return error(404, "Unknown Member", 10007)
        return reply(payloads.member(self.world, account))

    async def get_channel(self, request: web.Request) -> web.Response:
        channel = self.world.channels.get(int(request.match_info["channel_id"]))
        if channel is None:
            return error(404, "Unknown Channel", 10003)
        return reply(payloads.channel(self.world, channel))

    async def patch_channel(self, request: web.Request) -> web.Response:
        channel = self.world.channels.get(int(request.match_info["channel_id"]))
        if channel is None:
            return error(404, "Unknown Channel", 10003)
        body = await request.json()
        if "archived" in body and channel.is_thread:
            channel.archived = bool(body["archived"])
            self.world.changed()
        await self._on_channel("THREAD_UPDATE", channel.id)
        return reply(payloads.channel(self.world, channel))

    async def create_thread(self, request: web.Request) -> web.Response:
        parent = self.world.channels.get(int(request.match_info["channel_id"]))
        if parent is None or parent.type != 0:
            return error(404, "Unknown Channel", 10003)
        body = await request.json()
        name = str(body.get("name") or "").strip()
        if not 1 <= len(name) <= 100:
            return error(400, "Invalid Form Body: name", 50035)
        kind = body.get("type", 11)
        if kind not in (11, 12):
            return error(400, "Invalid Form Body: type", 50035)
        owner = request[ACCOUNT].id
        thread = self.world.add_channel(name, type=kind, parent_id=parent.id, owner_id=owner)
        if kind == 12:
            thread.members = {owner}
        await self._on_channel("THREAD_CREATE", thread.id)
        return reply(payloads.channel(self.world, thread), 201)

    async def add_thread_member(self, request: web.Request) -> web.Response:
        thread = self.world.channels.get(int(request.match_info["channel_id"]))
        if thread is None or not thread.is_thread:
            return error(404, "Unknown Channel", 10003)
        if not thread.admits(request[ACCOUNT].id):
            return error(403, "Missing Access", 50001)
        user_id = int(request.match_info["user_id"])
        if user_id not in self.world.accounts:
            return error(404, "Unknown User", 10013)
        if thread.members is not None:
            thread.members.add(user_id)
            self.world.changed()
        return web.Response(status=204)

    async def create_message(self, request: web.Request) -> web.Response:
        channel = self.world.channels.get(int(request.match_info["channel_id"]))
        if channel is None:
            return error(404, "Unknown Channel", 10003)
        if request[ACCOUNT].id in self.world.unverified:
            return error(403, "You need to verify your account in order to perform this action.", 40002)
        if not channel.admits(request[ACCOUNT].id):
            return error(403, "Missing Access", 50001)  # a private thread it was not added to
        if request.content_type == "multipart/form-data":
            body, files = await self._multipart(request)
        else:
            body, files = await request.json(), []
        content = str(body.get("content") or "")
        if not content.strip() and not files:
            return error(400, "Cannot send an empty message", 50006)
        if len(files) > MAX_ATTACHMENTS:
            return error(400, "Invalid Form Body: too many attachments", 50035)
        if len(content) > MESSAGE_LIMIT:
            return error(400, "Invalid Form Body: content must be 2000 or fewer in length.", 50035)
        nonce = body.get("nonce")
        # Discord: the same nonce from the same user within minutes returns the first message.
        existing = self.world.nonces.get((request[ACCOUNT].id, str(nonce)))
        if body.get("enforce_nonce") and nonce is not None and existing is not None:
            return reply(payloads.message(self.world, self.world.messages[existing]))
        if channel.archived:
            channel.archived = False  # posting in an archived (unlocked) thread reopens it
        reference = (body.get("message_reference") or {}).get("message_id")
        message = Message(
            id=self.world.ids.next(),
            channel_id=channel.id,
            author=request[ACCOUNT],
            content=content,
            mentions=self._mentions(content, body.get("allowed_mentions")),
            reference_id=int(reference) if reference else None,
            attachments=files,
        )
        self.world.add_message(message)
        if body.get("enforce_nonce") and nonce is not None:
            self.world.nonces[(request[ACCOUNT].id, str(nonce))] = message.id
        await self._on_message(message)
        if self.ack_after_reply and message.mentions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.world.wait_for(lambda: message.id in self.world.answered)
        return reply(payloads.message(self.world, message))

    async def _multipart(self, request: web.Request) -> tuple[dict[str, Any], list[Attachment]]:
        """Discord's upload form: payload_json, then files[n] parts."""
        body: dict[str, Any] = {}
        files: list[Attachment] = []
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "payload_json":
                body = json.loads(await part.text())
            elif part.name and part.name.startswith("files["):
                data = await part.read()
                kind = part.headers.get("Content-Type", "application/octet-stream")
                files.append(self.world.add_attachment(part.filename or "file", kind, bytes(data)))
        return body, files

    async def get_attachment(self, request: web.Request) -> web.Response:
        item = self.world.attachments.get(int(request.match_info["attachment_id"]))
        if item is None or item.filename != request.match_info["filename"]:
            return error(404, "Not Found")
        if not self.world.link_works(request.path, request.query):
            # Discord's answer to an expired (or unsigned, or forged) link.
            return web.Response(status=404, text="This content is no longer available.")
        return web.Response(body=item.data, headers={"Content-Type": item.content_type})

    def _mentions(self, content: str, allowed: dict[str, Any] | None) -> list[Account]:
        mentioned = [
            self.world.accounts[int(i)]
            for i in USER_MENTION.findall(content)
            if int(i) in self.world.accounts
        ]
        if allowed is None or "users" in allowed.get("parse", []):
            return mentioned
        # allowed_mentions.users names the only users this message may ping.
        permitted = {int(i) for i in allowed.get("users", [])}
        return [account for account in mentioned if account.id in permitted]

    async def get_message(self, request: web.Request) -> web.Response:
        message = self.world.messages.get(int(request.match_info["message_id"]))
        if message is None or message.channel_id != int(request.match_info["channel_id"]):
            return error(404, "Unknown Message", 10008)
        return reply(payloads.message(self.world, message))

    async def list_messages(self, request: web.Request) -> web.Response:
        channel_id = int(request.match_info["channel_id"])
        limit = min(100, int(request.query.get("limit", "50")))
        after = int(request.query.get("after", "0"))
        found = [m for m in self.world.messages.values() if m.channel_id == channel_id and m.id > after]
        found.sort(key=lambda m: m.id, reverse=True)
        return reply([payloads.message(self.world, m) for m in found[:limit]])
