"""The Discord implementation of `bot.interface.Backend`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import NoReturn

import discord

from bot.accounts import Account, AccountPool
from bot.config import BackendConfig, ModelSettings
from bot.continuation import CONTINUE_PROMPT, Transcript, is_cut_off
from bot.conversations import Conversations, Plan
from bot.follow import follow_reply
from bot.images import with_image_links
from bot.interface import (
    BackendStatus,
    BridgeState,
    CozeBusy,
    CozeLimited,
    Finished,
    ImageFile,
    ModelLimited,
    NotReady,
    PromptRequest,
    ReplyEvent,
    SendFailed,
    TextDelta,
)
from bot.listener import Listener, coze_message
from bot.prompt import render_prompt, split_prompt
from bot.rest import AllowedMentions, Credential, DiscordRest, RestError
from bot.router import Inbox, ReplyRouter
from bot.storage import Store
from bot.tasks import TaskSet

log = logging.getLogger(__name__)

THREAD_NAME_CHARS = 60
BUSY_TRIES = 3
THREAD_TIMEOUT = 10.0
# Discord's answers to a user token that can no longer post: 401, or 403 with code 40002
# ("You need to verify your account in order to perform this action").
UNVERIFIED = 40002
# A remembered thread that is gone: deleted (404), or archived and locked (50083).
THREAD_ARCHIVED = 50083


class StartupError(Exception):
    """The bridge cannot start (bad token, Discord unreachable); the message is safe to print."""


class _InvalidToken(Exception):
    """The account's token was refused; the prompt goes out with the next one."""


class _ThreadGone(Exception):
    """The conversation's thread no longer takes messages; start a new one."""


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


class DiscordBackend:
    def __init__(
        self,
        *,
        config: BackendConfig,
        client: Listener,
        rest: DiscordRest,
        router: ReplyRouter,
        pool: AccountPool,
        credentials: dict[str, Credential],
        conversations: Conversations,
        store: Store,
        reader: Credential,
        tasks: TaskSet,
    ) -> None:
        self._completion = config.completion
        self._models = config.model_routes
        self._client = client
        self._rest = rest
        self._router = router
        self._pool = pool
        self._credentials = credentials
        self._conversations = conversations
        self._store = store
        self._reader = reader
        self._tasks = tasks
        self._coze_ids = frozenset(model.coze_bot_id for model in self._models)
        self._posting = asyncio.Semaphore(config.discord.max_concurrent_posts)

    @property
    def state(self) -> BridgeState:
        return self._client.bridge_state

    @property
    def models(self) -> Sequence[ModelSettings]:
        return self._models

    @property
    def open_replies(self) -> int:
        return len(self._router)

    @property
    def pool(self) -> AccountPool:
        return self._pool

    async def wait_ready(self) -> None:
        """Wait for the gateway's first READY (for start-up banners and tests)."""
        await self._client.ready.wait()

    def status(self) -> BackendStatus:
        tokens, models = self._pool.report(self._models, time.time())
        return BackendStatus(self.state, self.open_replies, tokens, models)

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
            if int(payload["author"]["id"]) in self._coze_ids:
                self._router.deliver(coze_message(payload))

    def begin_shutdown(self) -> None:
        self._client.set_state(BridgeState.STOPPING)
        self._router.end_all()

    def busy_threads(self) -> set[int]:
        return {inbox.channel_id for inbox in self._router.open_inboxes()}

    async def complete(self, request: PromptRequest, *, heartbeat: float) -> AsyncGenerator[ReplyEvent, None]:
        if self.state is not BridgeState.READY:
            raise NotReady(f"the Discord gateway is {self.state.value}", retry_after=5)
        model = self._models[request.route]
        self._check_limits(model)
        conversations = self._conversations
        plan = await conversations.plan(request, model.name)
        async with conversations.hold(plan.lock_key):
            if plan.lock_key is not None:
                plan = await conversations.plan(request, model.name)  # another request may have moved it on
            try:
                async for event in self._in_thread(request, model, plan, heartbeat):
                    yield event
            except _ThreadGone:
                if plan.thread_id is None:
                    raise SendFailed("Discord lost the thread it had just created") from None
                log.info("%s: thread %s is gone; starting a new one", request.request_id, plan.thread_id)
                await conversations.forget(plan.thread_id)
                async for event in self._in_thread(
                    request, model, Plan(None, request.turns, None), heartbeat
                ):
                    yield event

    def _check_limits(self, model: ModelSettings) -> None:
        """Fail before posting anything when no prompt could be answered."""
        now = time.time()
        if until := self._pool.model_resting_until(model.coze_bot_id, now):
            raise ModelLimited(
                f"the Coze bot behind '{model.name}' is out of credits until {_utc(until):%H:%M} UTC",
                retry_after=until - now,
            )
        if self._pool.pick(model.coze_bot_id, now, advance=False) is None:
            raise self._all_resting(model, now, posted=False)

    def _all_resting(
        self, model: ModelSettings, now: float, *, posted: bool, notice: str | None = None
    ) -> CozeLimited:
        until = self._pool.earliest_return(model.coze_bot_id, now)
        lead = f"{notice} (" if notice else ""
        tail = ")" if notice else ""
        if until is None:
            return CozeLimited(f"{lead}no valid user token can post to '{model.name}'{tail}", posted=posted)
        return CozeLimited(
            f"{lead}every user token has used up today's Coze quota for '{model.name}'; "
            f"the first is back at {_utc(until):%H:%M} UTC{tail}",
            posted=posted,
            retry_after=until - now,
        )

    async def _in_thread(
        self, request: PromptRequest, model: ModelSettings, plan: Plan, heartbeat: float
    ) -> AsyncGenerator[ReplyEvent, None]:
        thread_id = plan.thread_id
        if thread_id is None:
            async with self._posting:
                thread_id = await self._open_thread(model, request)
            # Every thread the bridge creates is its own to archive once idle.
            await self._conversations.started(thread_id, model.name, time.time())
        inbox = self._router.open(thread_id)
        try:
            async for event in self._answer(inbox, model, plan, heartbeat):
                if isinstance(event, Finished):
                    await self._conversations.finished(
                        request, model.name, thread_id, event.content, time.time()
                    )
                yield event
        finally:
            self._router.close(inbox)

    async def _answer(
        self, inbox: Inbox, model: ModelSettings, plan: Plan, heartbeat: float
    ) -> AsyncGenerator[ReplyEvent, None]:
        """The whole answer: one reply, or several stitched when Coze cut it off."""
        mention = f"<@{model.coze_bot_id}>"
        chunks = split_prompt(render_prompt(plan.turns), mention)
        files = [image for turn in plan.turns for image in turn.images]
        transcript = Transcript()
        images: list[str] = []
        budget = self._completion.auto_continue
        while True:
            finished: Finished | None = None
            async for event in self._exchange(
                inbox, model, chunks, files, heartbeat, transcript, hide_ellipsis=transcript.parts < budget
            ):
                if isinstance(event, Finished):
                    finished = event
                else:
                    yield event
            assert finished is not None
            images.extend(finished.images)
            if transcript.parts < budget and finished.reason == "stop" and is_cut_off(finished.content):
                transcript.next_part(finished.content)
                chunks, files = [f"{mention} {CONTINUE_PROMPT}"], []
                continue
            text = transcript.shown(finished.content, final=True, hide_ellipsis=False)
            content = with_image_links(text, images)
            if rest := transcript.delta(content):
                yield TextDelta(rest)
            yield replace(finished, content=content, images=tuple(dict.fromkeys(images)))
            return

    async def _exchange(
        self,
        inbox: Inbox,
        model: ModelSettings,
        chunks: list[str],
        files: Sequence[ImageFile],
        heartbeat: float,
        transcript: Transcript,
        *,
        hide_ellipsis: bool,
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Post one prompt and follow its reply, moving to the next token when one is spent."""
        spent: list[Account] = []
        notice: str | None = None
        busy = 0
        backoff = self._completion.busy_backoff_seconds
        while True:
            now = time.time()
            account = self._pool.pick(model.coze_bot_id, now, exclude=spent)
            if account is None:
                raise self._all_resting(model, now, posted=inbox.posted, notice=notice)
            try:
                async with self._posting:
                    await self._post(inbox, model, chunks, files, account)
                async for event in follow_reply(
                    inbox,
                    self._client,
                    self._completion,
                    heartbeat=heartbeat,
                    transcript=transcript,
                    hide_ellipsis=hide_ellipsis,
                ):
                    yield event
                return
            except _InvalidToken:
                spent.append(account)
                continue
            except CozeLimited as exc:
                # Nothing was streamed (notices are held back): the next token asks again.
                notice = exc.message
                until = self._pool.rest(account, model.coze_bot_id, now)
                await self._store.rest_token(account.fingerprint, model.coze_bot_id, until)
                log.warning(
                    "%s has used up its Coze quota for '%s'; resting until %s",
                    account.masked,
                    model.name,
                    _utc(until).isoformat(timespec="minutes"),
                )
                spent.append(account)
            except ModelLimited as exc:
                until = self._pool.rest_model(model.coze_bot_id, now)
                await self._store.rest_model(model.coze_bot_id, until)
                exc.retry_after = until - now
                raise
            except CozeBusy:
                busy += 1
                if busy == BUSY_TRIES:
                    raise
                log.info("Coze is busy, posting again in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff *= 2
            self._router.retire_prompts(inbox)

    async def _post(
        self,
        inbox: Inbox,
        model: ModelSettings,
        chunks: list[str],
        files: Sequence[ImageFile],
        account: Account,
    ) -> None:
        credential = self._credentials[account.fingerprint]
        # Only the Coze bot may be pinged, whatever the prompt text contains.
        mentions: AllowedMentions = {"parse": [], "users": [str(model.coze_bot_id)]}
        for index, chunk in enumerate(chunks):
            # Images ride on the last message, the one that mentions the Coze bot.
            attach = files if index == len(chunks) - 1 else ()
            try:
                message_id = await self._rest.post_message(
                    inbox.channel_id,
                    {"content": chunk, "allowed_mentions": mentions},
                    credential,
                    files=attach,
                )
            except RestError as exc:
                await self._post_failed(inbox, account, exc)
            self._router.add_prompt(inbox, message_id)
        now = time.time()
        self._pool.count_request(account, now)
        await self._store.save_token(account.row())

    async def _post_failed(self, inbox: Inbox, account: Account, exc: RestError) -> NoReturn:
        if exc.status == 401 or exc.code == UNVERIFIED:
            if not account.invalid:
                log.error("%s was refused by Discord (%s); it will not be used again", account.masked, exc)
                account.invalid = True
                await self._store.save_token(account.row())
            raise _InvalidToken from None
        if not inbox.posted and (exc.status == 404 or exc.code == THREAD_ARCHIVED):
            raise _ThreadGone from None
        raise SendFailed(str(exc), posted=inbox.posted) from None

    async def _open_thread(self, model: ModelSettings, request: PromptRequest) -> int:
        # Over our own REST client: discord.py would build and cache a Thread object for each
        # one, for good, and retry 5xx answers for ~25 s that a caller should not wait out.
        if not isinstance(self._client.get_channel(model.channel_id), discord.TextChannel):
            raise SendFailed(f"channel {model.channel_id} is not a text channel the bot can see")
        try:
            async with asyncio.timeout(THREAD_TIMEOUT):
                return await self._rest.create_thread(model.channel_id, _thread_name(request), self._reader)
        except RestError as exc:
            raise SendFailed(f"Discord refused to create a thread ({exc})") from None
        except TimeoutError:
            raise SendFailed(f"Discord did not create a thread within {THREAD_TIMEOUT:g}s") from None


def _thread_name(request: PromptRequest) -> str:
    last = next((turn.content for turn in reversed(request.turns) if turn.role == "user"), "")
    words = " ".join(last.split())[:THREAD_NAME_CHARS] or "chat"
    return f"{words} · {request.request_id[-8:]}"
