"""The `Store` in plain dicts: for fast unit tests, and the reference the SQLite store must match.

Nothing here awaits, so every method runs to completion in one step of the event loop: a write
is "durable" (for as long as the object lives) the moment it returns, and `drain` has nothing
to wait for.
"""

from __future__ import annotations

from bot.store import StoredToken


class MemoryStore:
    """Meets `bot.store.Store`; forgets everything when dropped."""

    def __init__(self) -> None:
        # Only what some read gives back is kept: a thread's model and creation time are not.
        self._last_used: dict[int, float] = {}
        self._conversations: dict[str, int] = {}
        self._tokens: dict[str, StoredToken] = {}
        self._token_rests: dict[tuple[str, int], float] = {}
        self._model_rests: dict[int, float] = {}

    async def add_thread(self, thread_id: int, model: str, now: float) -> None:
        await self.forget_thread(thread_id)
        self._last_used[thread_id] = now

    async def idle_threads(self, before: float) -> list[int]:
        idle = [(used, thread_id) for thread_id, used in self._last_used.items() if used < before]
        return [thread_id for _, thread_id in sorted(idle)]

    async def forget_thread(self, thread_id: int) -> None:
        self._last_used.pop(thread_id, None)
        self._conversations = {
            key: thread for key, thread in self._conversations.items() if thread != thread_id
        }

    async def find_conversation(self, key: str) -> int | None:
        return self._conversations.get(key)

    async def remember(self, key: str, thread_id: int, now: float) -> None:
        if thread_id in self._last_used:
            self._last_used[thread_id] = now
            self._conversations[key] = thread_id

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
