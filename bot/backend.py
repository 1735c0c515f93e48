"""The Discord implementation of `bot.interface.Backend`: the port's facade over the reply core.

It owns the request's way through: the conversation's thread (held, one prompt at a time),
a new thread when there is none or it is gone, and the answer (`bot.answer`). It reaches
Discord only through the seams in `bot.seams`, so tests run it over fakes on a virtual clock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from bot.answer import Answering, prompt_messages
from bot.config import CompletionSettings, ModelSettings
from bot.conversations import Conversations, Plan
from bot.gateway_state import GatewayState
from bot.interface import (
    BackendStatus,
    BridgeState,
    Finished,
    Limits,
    NotReady,
    PromptRequest,
    ReplyEvent,
    SendFailed,
)
from bot.ledger import Ledger
from bot.payloads import coze_message
from bot.posting import Posting, ThreadGone
from bot.probe import Probing
from bot.reply_parts import ReplyParts
from bot.rest import Credential, RestError
from bot.router import Inbox, ReplyRouter
from bot.seams import Clock, History
from bot.stopping import Stopping
from bot.tasks import TaskSet

log = logging.getLogger(__name__)


def asked(request: PromptRequest) -> str:
    """Everything the caller wrote (a notice it contains is an echo, not Coze's trouble)."""
    return "\n".join(turn.content for turn in request.turns)


class DiscordBackend:
    def __init__(
        self,
        *,
        models: Sequence[ModelSettings],
        completion: CompletionSettings,
        gateway: GatewayState,
        router: ReplyRouter,
        posting: Posting,
        history: History,
        reader: Credential,
        ledger: Ledger,
        conversations: Conversations,
        clock: Clock,
        tasks: TaskSet,
    ) -> None:
        self._models = list(models)
        self._gateway = gateway
        self._router = router
        self._posting = posting
        self._history = history
        self._reader = reader
        self._ledger = ledger
        self._conversations = conversations
        self._clock = clock
        self._tasks = tasks
        self._coze_ids = frozenset(model.coze_bot_id for model in self._models)
        self._stopping = Stopping()
        # A reply that waited out an outage restarts its quiet period when the gateway returns.
        gateway.on_return(router.wake_all)
        parts = ReplyParts(completion, gateway, router, posting, ledger, clock, self._stopping)
        self._answering = Answering(parts, Probing(parts))

    @property
    def state(self) -> BridgeState:
        return BridgeState.STOPPING if self._stopping.is_set() else self._gateway.state

    @property
    def models(self) -> Sequence[ModelSettings]:
        return self._models

    def check_capacity(self, limits: Limits) -> None:
        self._posting.admission.refuse_when_full(limits.max_waiting)

    @property
    def open_replies(self) -> int:
        return len(self._router)

    async def wait_ready(self) -> None:
        """Wait for the gateway's first READY (for start-up banners and tests)."""
        await self._gateway.wait_ready()

    def status(self) -> BackendStatus:
        tokens, models = self._ledger.pool.report(self._models, self._clock())
        return BackendStatus(
            self.state, self.open_replies, tokens, models, intent_missing=self._gateway.intent_missing
        )

    def begin_shutdown(self) -> None:
        self._stopping.begin()
        self._router.end_all()

    def busy_threads(self) -> set[int]:
        return {inbox.channel_id for inbox in self._router.open_inboxes()}

    def resync(self) -> None:
        """After a new gateway session, fetch what open replies may have missed."""
        for inbox in self._router.open_inboxes():
            if inbox.prompt_ids:
                self._tasks.spawn(self._refetch(inbox), name=f"refetch-{inbox.channel_id}")

    async def _refetch(self, inbox: Inbox) -> None:
        try:
            payloads = await self._history.messages_after(
                inbox.channel_id, min(inbox.prompt_ids), self._reader
            )
        except RestError as exc:
            log.warning("could not refetch thread %s after a reconnect: %s", inbox.channel_id, exc)
            return
        for payload in payloads:
            if int(payload["author"]["id"]) in self._coze_ids:
                self._router.deliver(coze_message(payload))

    async def complete(self, request: PromptRequest, *, heartbeat: float) -> AsyncGenerator[ReplyEvent, None]:
        if self.state is not BridgeState.READY:
            raise NotReady(f"the Discord gateway is {self.state.value}", retry_after=5)
        model = self._models[request.route]
        self._ledger.check(model, self._clock())
        conversations = self._conversations
        plan = await conversations.plan(request, model.name)
        async with conversations.hold(plan.lock_key, max_waiting=request.limits.max_waiting_per_conversation):
            self._stopping.check(posted=False)
            if plan.lock_key is not None:
                plan = await conversations.plan(request, model.name)  # another request may have moved it on
            try:
                async with aclosing(self._in_thread(request, model, plan, heartbeat)) as events:
                    async for event in events:
                        yield event
            except ThreadGone:
                if plan.thread_id is None:
                    raise SendFailed("Discord lost the thread it had just created") from None
                log.info("%s: thread %s is gone; starting a new one", request.request_id, plan.thread_id)
                await conversations.forget(plan.thread_id)
                fresh = Plan(None, request.turns, None)
                async with aclosing(self._in_thread(request, model, fresh, heartbeat)) as events:
                    async for event in events:
                        yield event

    async def _in_thread(
        self, request: PromptRequest, model: ModelSettings, plan: Plan, heartbeat: float
    ) -> AsyncGenerator[ReplyEvent, None]:
        chunks = prompt_messages(plan.turns, model, request.limits.max_prompt_messages)
        thread_id = plan.thread_id
        # The request's first wait for a posting slot is where a flood is refused.
        max_waiting: int | None = request.limits.max_waiting
        if thread_id is None:
            admission = self._posting.admission
            async with aclosing(admission.wait(heartbeat, max_waiting=max_waiting)) as waiting:
                async for queued in waiting:
                    yield queued
            try:
                async with self._stopping.cut_short(posted=False):
                    thread_id = await self._posting.open_thread(model, self._posting.thread_name(request))
            finally:
                admission.release()
            self._conversations.started(thread_id, model.name, self._clock())
            max_waiting = None
        inbox = self._router.open(thread_id)
        try:
            answer = self._answering.answer(
                inbox, model, plan.turns, chunks, heartbeat, asked=asked(request), max_waiting=max_waiting
            )
            async with aclosing(answer) as events:
                async for event in events:
                    if isinstance(event, Finished):
                        # Before the event goes out: the caller stops reading at the finish chunk.
                        self._conversations.finished(
                            request, model.name, thread_id, event.content, self._clock()
                        )
                    yield event
        finally:
            self._router.close(inbox)
