"""The Discord implementation of `bot.interface.Backend`."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime

import aiohttp
import discord
import yarl

from bot.config import DEFAULT_MODEL, CompletionSettings, DiscordSettings
from bot.coze_texts import Holdback, Trouble, classify, seconds_until_reset
from bot.detector import CompletionDetector, NoReply, ReplySnapshot, Step
from bot.interface import (
    BridgeState,
    CozeBusy,
    CozeLimited,
    Finished,
    Idle,
    ModelLimited,
    NotReady,
    PromptRequest,
    ReplyEvent,
    ReplyTimeout,
    SendFailed,
    ServerShutdown,
    TextDelta,
    UpstreamError,
)
from bot.listener import Listener, coze_message
from bot.prompt import render_prompt, split_prompt
from bot.rest import AllowedMentions, Credential, DiscordRest, RestError
from bot.router import Inbox, ReplyRouter
from bot.tasks import TaskSet

log = logging.getLogger(__name__)

THREAD_NAME_CHARS = 60
BUSY_TRIES = 3
THREAD_TIMEOUT = 10.0


class StartupError(Exception):
    """The bridge cannot start (bad token, Discord unreachable); the message is safe to print."""


class DiscordBackend:
    def __init__(
        self,
        *,
        discord_settings: DiscordSettings,
        completion: CompletionSettings,
        client: Listener,
        rest: DiscordRest,
        router: ReplyRouter,
        senders: Sequence[Credential],
        reader: Credential,
        tasks: TaskSet,
    ) -> None:
        self._settings = discord_settings
        self._completion = completion
        self._client = client
        self._rest = rest
        self._router = router
        self._senders: Iterator[Credential] = itertools.cycle(senders)
        self._reader = reader
        self._tasks = tasks
        self._mention = f"<@{discord_settings.coze_bot_id}>"

    @property
    def state(self) -> BridgeState:
        return self._client.bridge_state

    @property
    def models(self) -> Sequence[str]:
        return (DEFAULT_MODEL,)

    @property
    def open_replies(self) -> int:
        return len(self._router)

    async def wait_ready(self) -> None:
        """Wait for the gateway's first READY (for start-up banners and tests)."""
        await self._client.ready.wait()

    def resync(self) -> None:
        """After a new gateway session, fetch what open replies may have missed."""
        for inbox in self._router.open_inboxes():
            if inbox.prompt_ids:
                self._tasks.spawn(self._refetch(inbox), name=f"refetch-{inbox.channel_id}")

    async def _refetch(self, inbox: Inbox) -> None:
        try:
            payloads = await self._rest.messages_after(inbox.channel_id, min(inbox.prompt_ids), self._reader)
        except RestError as exc:
            log.warning("could not refetch thread %s after a reconnect: %s", inbox.channel_id, exc)
            return
        for payload in payloads:
            if int(payload["author"]["id"]) == self._settings.coze_bot_id:
                self._router.deliver(coze_message(payload))

    def begin_shutdown(self) -> None:
        self._client.set_state(BridgeState.STOPPING)
        self._router.end_all()

    async def complete(self, request: PromptRequest, *, heartbeat: float) -> AsyncGenerator[ReplyEvent, None]:
        if self.state is not BridgeState.READY:
            raise NotReady(f"the Discord gateway is {self.state.value}", retry_after=5)
        thread_id = await self._open_thread(request)
        inbox = self._router.open(thread_id)
        backoff = self._completion.busy_backoff_seconds
        try:
            for attempt in range(1, BUSY_TRIES + 1):
                await self._post_prompt(inbox, request)
                try:
                    async for event in self._follow(inbox, heartbeat):
                        yield event
                    return
                except CozeBusy:
                    # Nothing was streamed yet (trouble texts are held back), so a retry is invisible.
                    if attempt == BUSY_TRIES:
                        raise
                log.info("%s: Coze is busy, posting again in %.1fs", request.request_id, backoff)
                await asyncio.sleep(backoff)
                backoff *= 2
                self._router.retire_prompts(inbox)
        finally:
            self._router.close(inbox)

    async def _open_thread(self, request: PromptRequest) -> int:
        channel = self._client.get_channel(self._settings.channel_id)
        if not isinstance(channel, discord.TextChannel):
            raise SendFailed(f"channel {self._settings.channel_id} is not a text channel the bot can see")
        try:
            # discord.py retries 5xx answers for about 25 s; a caller should not wait that long.
            async with asyncio.timeout(THREAD_TIMEOUT):
                thread = await channel.create_thread(
                    name=_thread_name(request),
                    type=discord.ChannelType.public_thread,
                    auto_archive_duration=60,
                )
        except discord.HTTPException as exc:
            raise SendFailed(f"Discord refused to create a thread (HTTP {exc.status})") from None
        except TimeoutError:
            raise SendFailed(f"Discord did not create a thread within {THREAD_TIMEOUT:g}s") from None
        return thread.id

    async def _post_prompt(self, inbox: Inbox, request: PromptRequest) -> None:
        chunks = split_prompt(render_prompt(request.turns), self._mention)
        sender = next(self._senders)
        # Only the Coze bot may be pinged, whatever the prompt text contains.
        mentions: AllowedMentions = {"parse": [], "users": [str(self._settings.coze_bot_id)]}
        for chunk in chunks:
            try:
                message_id = await self._rest.post_message(
                    inbox.channel_id, {"content": chunk, "allowed_mentions": mentions}, sender
                )
            except RestError as exc:
                raise SendFailed(str(exc), posted=bool(inbox.prompt_ids)) from None
            self._router.add_prompt(inbox, message_id)

    async def _follow(self, inbox: Inbox, heartbeat: float) -> AsyncGenerator[ReplyEvent, None]:
        loop = asyncio.get_running_loop()
        detector = CompletionDetector(
            started_at=loop.time(),
            quiet_seconds=self._completion.quiet_seconds,
            first_reply_timeout=self._completion.first_reply_timeout,
            max_reply_seconds=self._completion.max_reply_seconds,
        )
        holdback = Holdback()
        queue = inbox.queue
        client = self._client
        epoch = client.ready_epoch
        while (deadline := detector.deadline) is not None:
            if queue.empty():
                gateway_up = client.bridge_state is BridgeState.READY
                # While the gateway is away only the hard cap counts: silence proves nothing.
                until = deadline if gateway_up else detector.hard_deadline
                try:
                    async with asyncio.timeout(min(until - loop.time(), heartbeat)):
                        snapshot = await queue.get()
                except TimeoutError:
                    now = loop.time()
                    if client.ready_epoch != epoch:
                        epoch = client.ready_epoch
                        detector.touch(now)
                        continue
                    if now < deadline or (not gateway_up and now < detector.hard_deadline):
                        yield Idle()
                        continue
                    steps = detector.tick(now)
                else:
                    steps = self._feed(detector, snapshot, loop.time())
            else:
                steps = self._feed(detector, queue.get_nowait(), loop.time())
            for step in steps:
                if isinstance(step, TextDelta):
                    if text := holdback.release(detector.text):
                        yield TextDelta(text)
                elif isinstance(step, NoReply):
                    raise ReplyTimeout(
                        f"the Coze bot did not answer within {self._completion.first_reply_timeout:g}s",
                        posted=True,
                    )
                else:
                    for event in _finish(step, holdback):
                        yield event
                    return

    @staticmethod
    def _feed(detector: CompletionDetector, snapshot: ReplySnapshot | None, now: float) -> list[Step]:
        if snapshot is None:
            raise ServerShutdown("the bridge is shutting down; send the request again", posted=True)
        return detector.feed(snapshot, now)


def _finish(finished: Finished, holdback: Holdback) -> list[ReplyEvent]:
    """The end of a reply: an answer, a refusal, or Coze's trouble notice turned into an error."""
    trouble = classify(finished.content)
    notice = f"Coze: {finished.content.strip()}"
    if trouble is Trouble.DAILY_LIMIT:
        raise CozeLimited(notice, posted=True, retry_after=seconds_until_reset(datetime.now(UTC)))
    if trouble is Trouble.CREATOR_LIMIT:
        raise ModelLimited(notice, posted=True, retry_after=seconds_until_reset(datetime.now(UTC)))
    if trouble is Trouble.BUSY:
        raise CozeBusy(notice, posted=True)
    if trouble is Trouble.UPSTREAM:
        raise UpstreamError(notice, posted=True)
    events: list[ReplyEvent] = []
    if rest := holdback.flush(finished.content):
        events.append(TextDelta(rest))
    if trouble is Trouble.REFUSAL:
        finished = replace(finished, reason="content_filter")
    events.append(finished)
    return events


def _thread_name(request: PromptRequest) -> str:
    last = next((turn.content for turn in reversed(request.turns) if turn.role == "user"), "")
    words = " ".join(last.split())[:THREAD_NAME_CHARS] or "chat"
    return f"{words} · {request.request_id[-8:]}"


def _point_discordpy_at(api_base: str, gateway_url: str) -> None:
    # discord.py reads both from class attributes, so they apply process-wide; a plain Client
    # never asks /gateway/bot itself and falls back to DEFAULT_GATEWAY after a refused RESUME.
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


@asynccontextmanager
async def open_backend(
    discord_settings: DiscordSettings, completion: CompletionSettings
) -> AsyncIterator[DiscordBackend]:
    """Log in to Discord, start the gateway, yield the backend; close everything on exit."""
    bot = Credential(discord_settings.bot_token.get_secret_value(), is_bot=True, label="listener bot")
    senders = [
        Credential(token.get_secret_value(), is_bot=False, label=f"user token #{index}")
        for index, token in enumerate(discord_settings.user_tokens, start=1)
    ]
    if not senders:
        log.warning(
            "no discord.user_tokens: the listener bot posts the prompts itself, and a real Coze bot "
            "does not answer prompts written by bot accounts"
        )
        senders = [bot]
    tasks = TaskSet()
    router = ReplyRouter()
    client = Listener(
        guild_id=discord_settings.guild_id, coze_bot_id=discord_settings.coze_bot_id, sink=router.deliver
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        rest = DiscordRest(discord_settings.api_base, session)
        backend = DiscordBackend(
            discord_settings=discord_settings,
            completion=completion,
            client=client,
            rest=rest,
            router=router,
            senders=senders,
            reader=bot,
            tasks=tasks,
        )
        client.on_resync = backend.resync
        try:
            try:
                _point_discordpy_at(discord_settings.api_base, await rest.gateway_url(bot))
                await client.login(discord_settings.bot_token.get_secret_value())
            except (RestError, discord.LoginFailure) as exc:
                raise StartupError(
                    f"cannot log in to Discord at {discord_settings.api_base}: {exc}"
                ) from None
            client.set_state(BridgeState.CONNECTING)
            tasks.spawn(_run_gateway(client), name="discord-gateway")
            yield backend
        finally:
            client.set_state(BridgeState.STOPPING)
            await client.close()
            await tasks.close()


async def _run_gateway(client: Listener) -> None:
    try:
        await client.connect(reconnect=True)
    except discord.PrivilegedIntentsRequired:
        client.set_state(BridgeState.DEGRADED)
        log.error("enable the Message Content intent for the listening bot in the Discord developer portal")
    except (discord.GatewayNotFound, discord.ConnectionClosed) as exc:
        client.set_state(BridgeState.DEGRADED)
        log.error("the Discord gateway connection ended: %s", exc)
