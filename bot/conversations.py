"""Which thread continues a conversation, and what of it must still be posted.

A request whose messages extend an earlier finished exchange (the same history, with the
assistant's reply as it was returned) continues in that exchange's thread and posts only its
new turns: Coze keeps the context of its thread. A caller may name the conversation instead.
Keys are hashes of the history, so the database never holds the text itself.

Writes are write-behind: the reply's last bytes never wait for storage. Until a write is
durable its mapping is kept in memory, so a follow-up that comes at once still finds it.

A caller lists its conversations (by a fingerprint of its API key) and forgets one: it is
forgotten at once, and its thread queued for housekeeping to archive once its request in
flight, if any, is over.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.coordination import Coordinator, LocalCoordinator
from bot.interface import ChatTurn, ConversationBusy, ConversationInfo, PromptRequest, UnknownConversation
from bot.store import Store, StoredConversation
from bot.tasks import TaskSet

ROLES = {"developer": "system", "function": "tool"}
# How long an answer's end may wait for its exchange to be written, when bridges share it.
SHARED_WRITE_SECONDS = 2.0

log = logging.getLogger(__name__)


def history_key(model: str, turns: Sequence[ChatTurn], *, caller: str = "", user: str | None = None) -> str:
    """The key of a conversation so far, for one caller (and OpenAI `user`); whitespace at
    either end of a turn does not matter."""
    normal = [[ROLES.get(turn.role, turn.role), turn.content.strip()] for turn in turns]
    return "h:" + _digest([model, caller, user or "", normal])


def named_key(model: str, conversation: str, *, caller: str = "") -> str:
    return "n:" + _digest([model, caller, conversation])


def caller_fingerprint(caller: str) -> str:
    """What the store keeps of an API key to know whose a conversation is: a digest, never the key."""
    return hashlib.sha256(b"coze-bridge caller\0" + caller.encode("utf-8", "surrogateescape")).hexdigest()


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, ensure_ascii=False).encode()).hexdigest()


def new_turns(turns: Sequence[ChatTurn]) -> int:
    """Where the turns after the last assistant reply begin (what a continuation posts)."""
    for index in range(len(turns) - 1, -1, -1):
        if turns[index].role == "assistant":
            return index + 1
    return 0


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a request goes: an existing thread with only its new turns, or a new thread."""

    thread_id: int | None
    turns: tuple[ChatTurn, ...]
    lock_key: str | None


class Conversations:
    def __init__(self, store: Store, writes: TaskSet, coordinator: Coordinator | None = None) -> None:
        self._store = store
        self._writes = writes
        self._coordinator: Coordinator = coordinator or LocalCoordinator("local")
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # What the store does not show yet: exchanges not yet written, threads not yet forgotten.
        self._unwritten: dict[str, int] = {}
        self._forgetting: set[int] = set()
        self._pending: set[asyncio.Task[Any]] = set()
        # Threads a caller forgot, until archived: thread -> the key its requests hold.
        self._dismissed: dict[int, str] = {}
        self._to_archive: list[int] = []
        self._dismissal = asyncio.Event()

    def _write(self, write: Coroutine[Any, Any, None]) -> asyncio.Task[Any]:
        task = self._writes.spawn(write, name="conversation-write")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _settled(self) -> None:
        """Wait for the writes already started (a list or a forget sees every finished exchange)."""
        if self._pending:
            # asyncio.wait, not gather: a caller that gives up cancels none of the writes.
            await asyncio.wait(set(self._pending))

    async def _find(self, key: str) -> int | None:
        if (thread_id := self._unwritten.get(key)) is not None:
            return None if thread_id in self._dismissed else thread_id
        try:
            thread_id = await self._store.find_conversation(key)
        except Exception as exc:
            # The answer matters more than the thread: the whole history goes to a new one.
            log.error("could not read a conversation from storage (%s); starting a new thread", exc)
            return None
        return None if thread_id in self._forgetting else thread_id

    async def plan(self, request: PromptRequest, model: str) -> Plan:
        if request.fresh:
            return Plan(None, request.turns, None)
        start = new_turns(request.turns)
        key: str | None
        if request.conversation is not None:
            key = named_key(model, request.conversation, caller=request.caller)
            thread_id = await self._find(key)
        elif start:
            history = history_key(model, request.turns[:start], caller=request.caller, user=request.user)
            thread_id = await self._find(history)
            key = f"t:{thread_id}" if thread_id is not None else None
        else:
            return Plan(None, request.turns, None)
        if thread_id is None:
            return Plan(None, request.turns, key)
        return Plan(thread_id, request.turns[start:] or request.turns[-1:], key)

    @asynccontextmanager
    async def hold(self, key: str | None, *, max_waiting: int) -> AsyncIterator[None]:
        """One prompt in flight per conversation: later requests wait their turn, a few of them."""
        if key is None:
            yield
            return
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        if users > max_waiting:  # one in flight, `max_waiting` behind it
            raise ConversationBusy(
                f"{users - 1} requests already wait for this conversation; send this one when they are done",
                retry_after=5,
            )
        self._locks[key] = (lock, users + 1)
        try:
            async with lock, self._coordinator.hold(key):
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def started(self, thread_id: int, model: str, now: float) -> None:
        """A thread the bridge created: its own to archive once idle."""
        self._write(self._store.add_thread(thread_id, model, now))

    def finished(
        self, request: PromptRequest, model: str, thread_id: int, answer: str, now: float
    ) -> asyncio.Task[Any] | None:
        """Remember the exchange, so a request that extends it continues in its thread.

        The write runs behind; alone, this bridge finds the exchange in memory until it is
        durable. Shared with other bridges, a follow-up may go to any of them: then the write
        is returned, and the caller's response ends (after the answer) once it is `settled`.
        """
        if request.fresh or thread_id in self._dismissed:
            return None  # a thread its caller forgot while this request was in it: forgotten still
        if request.conversation is not None:
            key = named_key(model, request.conversation, caller=request.caller)
        else:
            exchange = (*request.turns, ChatTurn("assistant", answer))
            key = history_key(model, exchange, caller=request.caller, user=request.user)
        self._unwritten[key] = thread_id
        owner = caller_fingerprint(request.caller)
        write = self._write(self._remember(key, thread_id, now, owner, request.conversation))
        return write if self._coordinator.shared else None

    @staticmethod
    async def settled(write: asyncio.Task[Any]) -> None:
        """Wait for an exchange's write (at most SHARED_WRITE_SECONDS); never cancels it."""
        await asyncio.wait({write}, timeout=SHARED_WRITE_SECONDS)

    async def _remember(self, key: str, thread_id: int, now: float, owner: str, pinned: str | None) -> None:
        try:
            # Positional: the store's signature is the contract, fakes in tests take *args.
            await self._store.remember(key, thread_id, now, owner, pinned)
        finally:
            if self._unwritten.get(key) == thread_id:
                del self._unwritten[key]

    async def idle_threads(self, before: float) -> list[int]:
        return await self._store.idle_threads(before)

    async def forget(self, thread_id: int) -> None:
        """The thread is gone or archived: nothing continues in it any more."""
        self._unwritten = {key: kept for key, kept in self._unwritten.items() if kept != thread_id}
        self._forgetting.add(thread_id)
        try:
            await self._store.forget_thread(thread_id)
        finally:
            self._forgetting.discard(thread_id)

    async def listed(self, caller: str) -> list[ConversationInfo]:
        """The caller's conversations, most recently used first."""
        await self._settled()
        return [_info(stored) for stored in await self._store.conversations(caller_fingerprint(caller))]

    async def dismiss(self, caller: str, conversation_id: str) -> None:
        """Forget the caller's conversation with that id (another caller's is none of its own),
        and queue its thread for archiving; `UnknownConversation` when it has none."""
        await self._settled()
        found = await self._store.find_listed(caller_fingerprint(caller), conversation_id)
        if not found:
            raise UnknownConversation(
                "You have no conversation with that id; GET /v1/conversations lists yours."
            )
        for stored in found:
            # The key its requests hold: the archive waits for the one in flight.
            lock = (
                named_key(stored.model, stored.id, caller=caller)
                if stored.pinned
                else f"t:{stored.thread_id}"
            )
            self._dismissed[stored.thread_id] = lock
            try:
                await self.forget(stored.thread_id)
            except BaseException:
                # Still remembered: archived, its conversation would go on in an archived thread.
                del self._dismissed[stored.thread_id]
                raise
            self._to_archive.append(stored.thread_id)
            self._dismissal.set()

    async def wait_dismissed(self) -> None:
        """Return once a thread waits to be archived."""
        await self._dismissal.wait()

    def take_dismissed(self) -> list[int]:
        """The threads forgotten by their callers since the last take, to archive."""
        self._dismissal.clear()
        taken, self._to_archive = self._to_archive, []
        return taken

    def quiet(self, thread_id: int) -> AbstractAsyncContextManager[None]:
        """Hold a dismissed thread's conversation: entered once its request in flight is over."""
        return self.hold(self._dismissed[thread_id], max_waiting=sys.maxsize)

    def archived(self, thread_id: int) -> None:
        """A dismissed thread is archived (or given up on): nothing more to keep of it."""
        self._dismissed.pop(thread_id, None)


def _info(stored: StoredConversation) -> ConversationInfo:
    return ConversationInfo(
        id=stored.id,
        model=stored.model,
        thread_id=stored.thread_id,
        created=datetime.fromtimestamp(stored.created, UTC),
        last_used=datetime.fromtimestamp(stored.last_used, UTC),
        turns=stored.turns,
    )
