"""The reply core without discord.py or a wall clock: `DiscordBackend` over a fake Discord.

`FakeDiscord` stands in for every seam (posting, threads, history, channels). Posted prompts
that mention the Coze bot are answered by a script, whose edits reach the router on the loop's
clock; tests run under looptime, so a 60 s timeout takes no real time.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.backend import DiscordBackend
from bot.config import AccountSettings, BackendConfig, CompletionSettings, ModelSettings
from bot.conversations import Conversations
from bot.coordination import Coordinator
from bot.detector import ReplySnapshot
from bot.gateway_state import GatewayState
from bot.interface import ChatTurn, ImageFile, PromptRequest, ReplyEvent
from bot.ledger import Ledger
from bot.memory_store import MemoryStore
from bot.payloads import CozeMessage, MessagePayload
from bot.posting import Posting
from bot.probe import PROBE_TEXT
from bot.reset import ResetTime
from bot.rest import Credential, MessageCreate, RestError
from bot.router import ReplyRouter
from bot.status import BridgeState
from bot.tasks import TaskSet
from bot.token_pool import Pacing, PoolToken, TokenPool, TokenSpec, fingerprint

NOON = datetime(2026, 5, 4, 12, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 5, 5, 0, 0, tzinfo=UTC).timestamp()
COZE = 500
CHANNEL = 600
MODEL = ModelSettings(name="coze", coze_bot_id=COZE, channel_id=CHANNEL)
COMPLETION = CompletionSettings(
    quiet_seconds=4.0, first_reply_timeout=60.0, max_reply_seconds=300.0, busy_backoff_seconds=2.0
)


@dataclass
class Reply:
    """How the fake Coze answers one prompt: the full text after each edit, then the marker."""

    edits: Sequence[str]
    marker: bool = True
    first: float = 1.0  # seconds from the prompt to the reply's creation
    step: float = 0.5  # seconds between edits
    early: int = 0  # edits delivered before REST returns the prompt's id


@dataclass
class Post:
    channel_id: int
    content: str
    token: str  # the credential's label
    message_id: int
    files: int = 0
    at: float = 0.0  # the loop's time when it was taken in


Script = Callable[[Post], Reply | None]


def user_id(label: str) -> int:
    """The fake account id behind a credential's label ("user token #2" is 902)."""
    return 900 + int(label.rsplit("#", 1)[1]) if "#" in label else 900


def is_probe(post: Post) -> bool:
    return post.content.endswith(PROBE_TEXT)


def answer(text: str, **options: Any) -> Script:
    """Every prompt gets `text`, streamed in three edits."""
    cuts = [len(text) // 3, 2 * len(text) // 3, len(text)]
    return lambda post: Reply([text[:cut] for cut in cuts if cut], **options)


class Fanout:
    """What every listener of bridges sharing a database sees: each message, on each router."""

    def __init__(self, routers: Sequence[ReplyRouter]) -> None:
        self.routers = list(routers)

    def deliver(self, message: CozeMessage) -> None:
        for router in self.routers:
            router.deliver(message)


class FakeDiscord:
    """Poster, History and Channels at once; it records what the backend did."""

    def __init__(self, router: ReplyRouter | Fanout) -> None:
        self._router = router
        self._ids = itertools.count(10_000)
        self.script: Script = answer("Hello there, friend.")
        self.posts: list[Post] = []
        self.threads: list[int] = []
        # Failures to raise, in order, before the next successful call of each kind.
        self.post_failures: list[tuple[str | None, RestError]] = []  # (token label or any, error)
        self.thread_failures: list[RestError] = []
        self.gone_threads: set[int] = set()
        self.thread_gate: asyncio.Event | None = None  # create_thread waits on it when set
        self.post_gate: asyncio.Event | None = None  # post_message waits on it when set
        self.history: list[MessagePayload] = []
        self.members: dict[int, list[int]] = {}  # private thread -> the accounts added, in order
        self.revoked: set[str] = set()  # token labels whose account Discord no longer knows
        self._timers: list[asyncio.TimerHandle] = []
        self._posted = asyncio.Condition()

    async def wait_for_prompts(self, count: int) -> None:
        async with self._posted:
            await self._posted.wait_for(lambda: len(self.prompts()) >= count)

    def prompts(self) -> list[Post]:
        """The posts that ask the Coze bot, apart from the bridge's own limit checks."""
        return [post for post in self.posts if f"<@{COZE}>" in post.content and not is_probe(post)]

    def probes(self) -> list[Post]:
        return [post for post in self.posts if is_probe(post)]

    def tokens_used(self) -> list[str]:
        return [post.token for post in self.prompts()]

    async def create_thread(
        self, channel_id: int, name: str, credential: Credential, *, private: bool = False
    ) -> int:
        if self.thread_gate is not None:
            await self.thread_gate.wait()
        if self.thread_failures:
            raise self.thread_failures.pop(0)
        thread_id = next(self._ids)
        self.threads.append(thread_id)
        if private:
            self.members[thread_id] = []
        return thread_id

    async def add_thread_member(self, thread_id: int, user_id: int, credential: Credential) -> None:
        await asyncio.sleep(0)
        if thread_id in self.gone_threads:
            raise RestError("Unknown Channel", status=404, code=10003)
        self.members.setdefault(thread_id, []).append(user_id)

    async def user_id(self, credential: Credential) -> int:
        await asyncio.sleep(0)
        if credential.label in self.revoked:
            raise RestError("401: Unauthorized", status=401, code=0)
        return user_id(credential.label)

    async def post_message(
        self,
        channel_id: int,
        payload: MessageCreate,
        credential: Credential,
        *,
        files: Sequence[ImageFile] = (),
    ) -> int:
        await asyncio.sleep(0)  # a real post always yields to the loop
        if self.post_gate is not None:
            await self.post_gate.wait()
        for index, (label, error) in enumerate(self.post_failures):
            if label in (None, credential.label):
                del self.post_failures[index]
                raise error
        if channel_id in self.gone_threads:
            raise RestError("Unknown Channel", status=404, code=10003)
        if user_id(credential.label) not in self.members.get(channel_id, [user_id(credential.label)]):
            raise RestError("Missing Access", status=403, code=50001)  # a private thread it is not in
        post = Post(
            channel_id,
            payload["content"],
            credential.label,
            next(self._ids),
            len(files),
            asyncio.get_running_loop().time(),
        )
        self.posts.append(post)
        # In a private thread the Coze bot sees only what is posted after it was added.
        sees = COZE in self.members.get(channel_id, [COZE])
        if f"<@{COZE}>" in post.content and sees and (reply := self.script(post)) is not None:
            self._answer(post, reply)
        async with self._posted:
            self._posted.notify_all()
        return post.message_id

    def _answer(self, post: Post, reply: Reply) -> None:
        loop = asyncio.get_running_loop()
        reply_id = next(self._ids)
        last = len(reply.edits) - 1
        for index, text in enumerate(reply.edits):
            buttons = ("More",) if reply.marker and index == last else None
            message = CozeMessage(post.channel_id, post.message_id, ReplySnapshot(reply_id, text, buttons))
            if index < reply.early:
                # The gateway beat REST: Coze's reply is there before the post's id is known.
                self._router.deliver(message)
            else:
                delay = reply.first + reply.step * index
                self._timers.append(loop.call_later(delay, self._router.deliver, message))

    async def messages_after(
        self, channel_id: int, after: int, credential: Credential
    ) -> list[MessagePayload]:
        return [m for m in self.history if int(m["channel_id"]) == channel_id and int(m["id"]) > after]

    def is_text_channel(self, channel_id: int) -> bool:
        return channel_id == CHANNEL

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()


@dataclass
class Rig:
    backend: DiscordBackend
    discord: FakeDiscord
    store: MemoryStore
    pool: TokenPool
    gateway: GatewayState
    writes: TaskSet
    tasks: TaskSet
    requests: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def request(self, *turns: tuple[str, str], conversation: str | None = None) -> PromptRequest:
        return PromptRequest(
            request_id=f"req_{next(self.requests):08d}",
            model="coze",
            turns=tuple(ChatTurn(role, content) for role, content in turns),
            conversation=conversation,
        )

    def ask(self, text: str = "hello", **options: Any) -> PromptRequest:
        return self.request(("user", text), **options)

    async def advance(self, seconds: float) -> None:
        """Let `seconds` pass on the loop's clock (looptime: no real time)."""
        await asyncio.sleep(seconds)  # sleep-ok: virtual time, the clock moves at once

    async def run(self, request: PromptRequest, *, heartbeat: float = 3600.0) -> list[ReplyEvent]:
        """Every event of one request, to its end (or its BridgeError)."""
        return [event async for event in self.backend.complete(request, heartbeat=heartbeat)]


NO_PACING = Pacing()


class FirstOfTies(random.Random):
    """Ties go to the first token listed, so a test knows who posts; gaps' jitter stays random."""

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[0]


def rig_roster(config: BackendConfig) -> tuple[list[TokenSpec], dict[str, Credential]]:
    """The rig's tokens from settings: the token's text is its label (so FakeDiscord knows it)."""
    specs: list[TokenSpec] = []
    credentials: dict[str, Credential] = {}
    for index, entry in enumerate(config.discord.user_tokens, start=1):
        label = entry.token.get_secret_value()
        accounts = config.accounts
        pacing = Pacing(
            entry.max_in_flight or accounts.max_in_flight,
            accounts.min_gap_seconds if entry.min_gap_seconds is None else entry.min_gap_seconds,
            accounts.jitter_seconds,
            entry.daily_cap or accounts.daily_cap,
        )
        specs.append(TokenSpec(label, fingerprint(label), pacing, entry.enabled))
        credentials[fingerprint(label)] = Credential(label, is_bot=False, label=label)
        assert label == f"user token #{index}" or entry.label is None
    return specs, credentials


async def make_rig(
    *,
    tokens: int = 2,
    completion: CompletionSettings = COMPLETION,
    store: MemoryStore | None = None,
    max_concurrent_posts: int = 4,
    private_threads: bool = False,
    pacing: Pacing = NO_PACING,
    max_queue: int = 100,
    seed: int = 1,
    coordinator: Coordinator | None = None,
    router: ReplyRouter | None = None,
    discord: FakeDiscord | None = None,
) -> AsyncIterator[Rig]:
    """One backend over the fake Discord; bridges sharing a database (tests/shared_rig.py)
    pass their coordinator, and each its own router on one fake Discord."""
    loop = asyncio.get_running_loop()
    # The wall clock on the loop's time. looptime starts the loop's virtual time with the test
    # itself (after fixtures), at zero.
    clock = lambda: NOON + loop.time()  # noqa: E731
    router = ReplyRouter() if router is None else router  # an empty router is falsy (len 0)
    discord = FakeDiscord(router) if discord is None else discord
    labels = [f"user token #{n}" for n in range(1, tokens + 1)]
    credentials = {fingerprint(label): Credential(label, is_bot=False, label=label) for label in labels}
    pool = TokenPool(
        [PoolToken(label=label, fingerprint=fingerprint(label), pacing=pacing) for label in labels],
        ResetTime.parse("00:00 UTC"),
        rng=FirstOfTies(seed),
    )
    store = store or MemoryStore()
    gateway = GatewayState()
    gateway.set(BridgeState.READY)  # the test stands in for the connection code
    writes, tasks = TaskSet(), TaskSet()
    reader = Credential("bot", is_bot=True, label="listener bot")
    backend = DiscordBackend(
        models=[MODEL],
        completion=completion,
        accounts=AccountSettings(max_queue=max_queue),
        gateway=gateway,
        router=router,
        posting=Posting(
            poster=discord,
            channels=discord,
            router=router,
            reader=reader,
            credentials=credentials,
            max_concurrent=max_concurrent_posts,
            private_threads=private_threads,
        ),
        history=discord,
        reader=reader,
        ledger=Ledger(pool, store, writes, clock=clock, max_queue=max_queue, coordinator=coordinator),
        conversations=Conversations(store, writes, coordinator),
        clock=clock,
        tasks=tasks,
        credentials=credentials,
        checker=discord,
        roster=rig_roster,
    )
    try:
        yield Rig(backend, discord, store, pool, gateway, writes, tasks)
    finally:
        discord.close()
        await tasks.close()
        await writes.wait()
