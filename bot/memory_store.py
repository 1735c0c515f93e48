"""The `Store` in plain dicts: for fast unit tests, and the reference the SQLite store must match.

Nothing here awaits, so every method runs to completion in one step of the event loop: a write
is "durable" (for as long as the object lives) the moment it returns, and `drain` has nothing
to wait for.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from bot.store import StoredConversation, StoredToken


@dataclass(slots=True)
class _Thread:
    model: str
    created: float
    last_used: float
    caller: str | None = None
    pinned: str | None = None
    turns: int = 0


@dataclass(frozen=True, slots=True)
class _Mapping:
    thread_id: int
    order: int  # which mapping is the latest (SQLite: its updated_at, then its rowid)


class MemoryStore:
    """Meets `bot.store.Store`; forgets everything when dropped."""

    def __init__(self) -> None:
        self._threads: dict[int, _Thread] = {}
        self._conversations: dict[str, _Mapping] = {}
        self._order = itertools.count()
        self._tokens: dict[str, StoredToken] = {}
        self._token_rests: dict[tuple[str, int], float] = {}
        self._model_rests: dict[int, float] = {}

    async def add_thread(self, thread_id: int, model: str, now: float) -> None:
        await self.forget_thread(thread_id)
        self._threads[thread_id] = _Thread(model, now, now)

    async def idle_threads(self, before: float) -> list[int]:
        idle = [(t.last_used, thread_id) for thread_id, t in self._threads.items() if t.last_used < before]
        return [thread_id for _, thread_id in sorted(idle)]

    async def forget_thread(self, thread_id: int) -> None:
        self._threads.pop(thread_id, None)
        self._conversations = {
            key: kept for key, kept in self._conversations.items() if kept.thread_id != thread_id
        }

    async def find_conversation(self, key: str) -> int | None:
        mapping = self._conversations.get(key)
        return None if mapping is None else mapping.thread_id

    async def remember(
        self, key: str, thread_id: int, now: float, caller: str | None = None, pinned: str | None = None
    ) -> None:
        thread = self._threads.get(thread_id)
        if thread is None:
            return
        thread.last_used, thread.caller, thread.pinned = now, caller, pinned
        thread.turns += 1
        self._conversations[key] = _Mapping(thread_id, next(self._order))

    async def conversations(self, caller: str) -> list[StoredConversation]:
        latest: dict[int, tuple[int, str]] = {}
        for key, mapping in self._conversations.items():
            if mapping.order > latest.get(mapping.thread_id, (-1, ""))[0]:
                latest[mapping.thread_id] = (mapping.order, key)
        listed = [
            StoredConversation(
                thread.pinned if thread.pinned is not None else latest[thread_id][1],
                thread_id,
                thread.model,
                thread.created,
                thread.last_used,
                thread.turns,
                pinned=thread.pinned is not None,
            )
            for thread_id, thread in self._threads.items()
            if thread.caller == caller and thread_id in latest
        ]
        return sorted(listed, key=lambda c: (c.last_used, c.thread_id), reverse=True)

    async def find_listed(self, caller: str, conversation_id: str) -> list[StoredConversation]:
        mapping = self._conversations.get(conversation_id)

        def named(conversation: StoredConversation) -> bool:
            if conversation.pinned:
                return conversation.id == conversation_id
            return mapping is not None and mapping.thread_id == conversation.thread_id

        return [conversation for conversation in await self.conversations(caller) if named(conversation)]

    async def tokens(self) -> dict[str, StoredToken]:
        return dict(self._tokens)

    async def save_token(self, row: StoredToken) -> None:
        self._tokens[row.fingerprint] = row

    async def token_rests(self) -> dict[tuple[str, int], float]:
        return dict(self._token_rests)

    async def rest_token(self, fingerprint: str, coze_bot_id: int, until: float) -> None:
        self._token_rests[fingerprint, coze_bot_id] = until

    async def model_rests(self) -> dict[int, float]:
        return dict(self._model_rests)

    async def rest_model(self, coze_bot_id: int, until: float) -> None:
        self._model_rests[coze_bot_id] = until

    async def drain(self) -> None:
        """Nothing is ever in flight."""
