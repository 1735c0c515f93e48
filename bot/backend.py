"""The Discord implementation of `bot.interface.Backend`: the port's facade over the reply core.

It owns the request's way through: the conversation's thread (held, one prompt at a time),
a new thread when there is none or it is gone, and the answer (`bot.answer`). It reaches
Discord only through the seams in `bot.seams`, so tests run it over fakes on a virtual clock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import replace

from bot.answer import Answering, prompt_messages
from bot.config import AccountSettings, BackendConfig, CompletionSettings, ModelSettings
from bot.conversations import Conversations, Plan
from bot.coordination import Coordinator
from bot.gateway_state import GatewayState
from bot.interface import (
    UNKNOWN_TOKEN,
    ConversationInfo,
    Finished,
    ImageKeeper,
    Limits,
    NotReady,
    PromptRequest,
    ReplyEvent,
    SendFailed,
    ServerShutdown,
    StorageUnavailable,
    UnknownToken,
)
from bot.ledger import Attempts, Ledger
from bot.payloads import coze_message
from bot.posting import Posting, ThreadGone
from bot.probe import Probing
from bot.reply_parts import ReplyParts
from bot.rest import Credential, RestError
from bot.router import Inbox, ReplyRouter
from bot.seams import Clock, History
from bot.sharing import instance_reports, share_rounds
from bot.status import BackendStatus, BridgeState, InstanceReport, QueueStatus, TokenReport
from bot.stopping import MESSAGE, Stopping
from bot.store import Store
from bot.tasks import TaskSet
from bot.token_checks import Accounts, TokenChecks
from bot.token_pool import PoolToken, TokenSpec, utc
from bot.token_queue import Lease
from bot.token_report import pool_report, token_report

log = logging.getLogger(__name__)

# The user tokens a configuration lists, and their credentials (bot.token_roster).
Roster = Callable[[BackendConfig], tuple[list[TokenSpec], dict[str, Credential]]]


def asked(request: PromptRequest) -> str:
    """Everything the caller wrote (a notice it contains is an echo, not Coze's trouble)."""
    return "\n".join(turn.content for turn in request.turns)


class DiscordBackend:
    def __init__(
        self,
        *,
        models: Sequence[ModelSettings],
        completion: CompletionSettings,
        accounts: AccountSettings,
        gateway: GatewayState,
        router: ReplyRouter,
        posting: Posting,
        history: History,
        reader: Credential,
        ledger: Ledger,
        conversations: Conversations,
        clock: Clock,
        tasks: TaskSet,
        credentials: dict[str, Credential],
        checker: Accounts,
        roster: Roster,
        on_models: Callable[[frozenset[int]], None] = lambda ids: None,
        images: ImageKeeper | None = None,
    ) -> None:
        self._models = list(models)
        self._completion = completion
        self._accounts = accounts
        # Shared with `posting`: a reload changes what both see.
        self._credentials = credentials
        self._roster = roster
        self._on_models = on_models
        self._stopped_at: float | None = None
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
        # The live bridges sharing the database, as the last round saw them (bot.sharing).
        self.instances: tuple[InstanceReport, ...] = ()
        # A reply that waited out an outage restarts its quiet period when the gateway returns.
        gateway.on_return(router.wake_all)
        parts = ReplyParts(completion, gateway, router, posting, ledger, clock, self._stopping, images)
        self._answering = Answering(parts, Probing(parts))
        self._checks = TokenChecks(
            ledger,
            checker,
            credentials,
            interval=lambda: self._accounts.check_hours * 3600,
            rng=ledger.pool.rng,
        )

    def start_checks(self) -> None:
        """Check every token now (in the background) and every accounts.check_hours after."""
        self._tasks.spawn(self._checks.run(), name="token-checks")

    def start_sharing(self, store: Store) -> None:
        """Keep the pool in step with the bridges sharing the database (when it is shared)."""
        coordinator = self._ledger.coordinator
        if coordinator.shared:
            rounds = share_rounds(coordinator, self._ledger, store, self._clock, self._seen)
            self._tasks.spawn(rounds, name="pool-sharing")
        else:
            self._tasks.spawn(self._list_alone(coordinator), name="instance")

    async def _list_alone(self, coordinator: Coordinator) -> None:
        self._seen(instance_reports(await coordinator.instances()))  # itself, the leader

    def _seen(self, instances: tuple[InstanceReport, ...]) -> None:
        self.instances = instances

    @property
    def state(self) -> BridgeState:
        return BridgeState.STOPPING if self._stopping.is_set() else self._gateway.state

    @property
    def models(self) -> Sequence[ModelSettings]:
        return self._models

    def _check_storage(self) -> None:
        if not self._ledger.coordinator.available:
            raise StorageUnavailable(
                "the database this bridge shares with others cannot be reached; nothing was posted",
                retry_after=5,
            )

    def check_capacity(self, limits: Limits) -> None:
        self._check_storage()
        self._posting.admission.refuse_when_full(limits.max_waiting)
        self._ledger.queue.refuse_when_full()

    @property
    def open_replies(self) -> int:
        return len(self._router)

    async def wait_ready(self) -> None:
        """Wait for the gateway's first READY (for start-up banners and tests)."""
        await self._gateway.wait_ready()

    def status(self) -> BackendStatus:
        tokens, models = pool_report(self._ledger.pool, self._models, self._clock())
        queue = self._ledger.queue
        full = queue.full_since
        return BackendStatus(
            self.state,
            self.open_replies,
            tokens,
            models,
            intent_missing=self._gateway.intent_missing,
            queue=QueueStatus(len(queue), queue.limit, utc(full) if full is not None else None),
            state_since=utc(self._stopped_at) if self._stopped_at is not None else self._gateway.since,
            instance=self._ledger.pool.here,
            instances=self.instances,
            storage_available=self._ledger.coordinator.available,
        )

    def begin_shutdown(self) -> None:
        self._stopped_at = self._clock()
        self._stopping.begin()
        self._ledger.queue.close(ServerShutdown(MESSAGE))
        self._router.end_all()

    def reconfigure(self, config: BackendConfig) -> None:
        """Take the new token list, per-token settings, account defaults and models at once."""
        specs, credentials = self._roster(config)  # raises before anything changed
        now = self._clock()
        pool = self._ledger.pool
        pool.apply(specs, now)
        pool.reset = config.accounts.reset_at
        self._accounts = config.accounts
        self._ledger.queue.limit = config.accounts.max_queue
        self._credentials.update(credentials)
        listed = {token.fingerprint for token in pool.tokens}
        for key in [key for key in self._credentials if key not in listed]:
            del self._credentials[key]  # tokens that have left the pool (retiring ones keep theirs)
        self._models = list(config.model_routes)
        self._coze_ids = frozenset(model.coze_bot_id for model in self._models)
        self._on_models(self._coze_ids)
        retiring = [token.masked for token in pool.tokens if token.retiring_since is not None]
        log.info(
            "reconfigured: %d user token(s)%s, %d model(s)",
            len(pool.tokens) - len(retiring),
            f", retiring {', '.join(retiring)}" if retiring else "",
            len(self._models),
        )
        self._ledger.queue.serve()

    def _token(self, token_id: str) -> PoolToken:
        token = self._ledger.pool.find(token_id)
        if token is None:
            raise UnknownToken(UNKNOWN_TOKEN)
        return token

    def _report(self, token: PoolToken) -> TokenReport:
        return token_report(self._ledger.pool, token, self._models, self._clock())

    def set_token_enabled(self, token_id: str, enabled: bool) -> TokenReport:
        token = self._token(token_id)
        self._ledger.set_disabled(token, not enabled, self._clock())
        return self._report(token)

    async def check_token(self, token_id: str) -> TokenReport:
        token = self._token(token_id)
        await self._checks.check(token)
        return self._report(token)

    async def conversations(self, caller: str) -> Sequence[ConversationInfo]:
        return await self._conversations.listed(caller)

    async def forget_conversation(self, caller: str, conversation_id: str) -> None:
        # Forgotten now; housekeeping archives the thread (bot.housekeeping.archive_dismissed).
        await self._conversations.dismiss(caller, conversation_id)

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
        self._check_storage()
        model = self._models[request.route]
        self._ledger.check(model, self._clock())
        conversations = self._conversations
        plan = await conversations.plan(request, model.name)
        max_wait = request.limits.max_queue_seconds or self._completion.max_reply_seconds
        # The token this request holds, from its take (before any thread) until its reply ends.
        attempts = Attempts(self._ledger, model, self._completion.busy_backoff_seconds, Lease(), max_wait)
        try:
            async with conversations.hold(
                plan.lock_key, max_waiting=request.limits.max_waiting_per_conversation
            ):
                self._stopping.check(posted=False)
                if plan.lock_key is not None:
                    plan = await conversations.plan(
                        request, model.name
                    )  # another request may have moved it on
                try:
                    async with aclosing(self._in_thread(request, model, plan, heartbeat, attempts)) as events:
                        async for event in events:
                            yield event
                except ThreadGone:
                    if plan.thread_id is None:
                        raise SendFailed("Discord lost the thread it had just created") from None
                    log.info("%s: thread %s is gone; starting a new one", request.request_id, plan.thread_id)
                    await conversations.forget(plan.thread_id)
                    fresh = Plan(None, request.turns, None)
                    async with aclosing(
                        self._in_thread(request, model, fresh, heartbeat, attempts)
                    ) as events:
                        async for event in events:
                            yield event
        finally:
            self._ledger.queue.release(attempts.lease)

    async def _in_thread(
        self, request: PromptRequest, model: ModelSettings, plan: Plan, heartbeat: float, attempts: Attempts
    ) -> AsyncGenerator[ReplyEvent, None]:
        chunks = prompt_messages(plan.turns, model, request.limits.max_prompt_messages)
        # The token first: a request refused for a full queue has made no thread.
        if attempts.lease.token is None:
            async with aclosing(attempts.token(heartbeat, posted=False)) as taking:
                async for queued in taking:
                    yield queued
            self._stopping.check(posted=False)
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
                inbox,
                model,
                plan.turns,
                chunks,
                heartbeat,
                attempts=attempts,
                asked=asked(request),
                max_waiting=max_waiting,
            )
            async with aclosing(answer) as events:
                async for event in events:
                    if not isinstance(event, Finished):
                        yield event
                        continue
                    # Before the event goes out: a caller may stop reading at the finish chunk.
                    write = self._conversations.finished(
                        request, model.name, thread_id, event.content, self._clock()
                    )
                    yield replace(event, continued=plan.thread_id is not None, settling=write is not None)
                    if write is not None:
                        # The answer is out; its response ends once a follow-up to any bridge
                        # sharing the database would find the exchange.
                        await self._conversations.settled(write)
        finally:
            self._router.close(inbox)
