"""What the bridge keeps across requests and restarts, as a contract every store meets.

Threads it created, the conversations continuing in them (and whose they are), user-token
health, and rests of tokens and models. `bot.sqlite_store` keeps them in a file, `bot.postgres_store` in a PostgreSQL
database several instances can share (`bot.stores.open_store` picks by `storage.url`), and
`bot.memory_store` in dicts, for fast tests and as the reference. `tests/test_store_contract.py`
runs one suite over all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredToken:
    """What the store keeps of a user token (never the token itself, only its fingerprint)."""

    fingerprint: str
    invalid: bool
    day_start: float
    requests_today: int
    # Why Discord refused it, and since when (epoch seconds).
    invalid_reason: str | None = None
    invalid_since: float | None = None
    # Turned off by an admin (PATCH /admin/tokens/{id}), and since when: survives reloads and restarts.
    disabled: bool = False
    disabled_since: float | None = None


@dataclass(frozen=True, slots=True)
class StoredConversation:
    """A thread as its caller's conversation (GET /v1/conversations); times in epoch seconds."""

    id: str  # the id the caller pinned, or else the thread's latest conversation key
    thread_id: int
    model: str
    created: float
    last_used: float
    turns: int  # exchanges remembered in the thread
    pinned: bool  # `id` is an id the caller pinned (not a history key)


class Store(Protocol):
    """Every write returns once it is durable; reads see every write that has returned."""

    # Threads.
    async def add_thread(self, thread_id: int, model: str, now: float) -> None:
        """Know a new thread, used at `now`; adding a known one starts it afresh, without conversations."""

    async def idle_threads(self, before: float) -> list[int]:
        """Threads last used before `before` (strictly), oldest first."""

    async def forget_thread(self, thread_id: int) -> None:
        """Forget the thread and every conversation in it; an unknown thread is no error."""

    # Conversations.
    async def find_conversation(self, key: str) -> int | None:
        """The thread the conversation continues in, if any."""

    async def remember(
        self, key: str, thread_id: int, now: float, caller: str | None = None, pinned: str | None = None
    ) -> None:
        """Map the key to the thread (replacing an earlier mapping), mark the thread used, and
        count one more exchange in it, made by `caller` (a fingerprint; None: listed to nobody)
        in the conversation it `pinned` (None: one found by its history).

        A thread the store does not know (forgotten meanwhile) gets nothing stored, and no error:
        housekeeping may forget a thread while its last reply is still being remembered.
        """

    async def conversations(self, caller: str) -> list[StoredConversation]:
        """The threads `caller` (a fingerprint) last remembered a conversation in and that some
        conversation still continues in, most recently used first (then the newest thread)."""

    async def find_listed(self, caller: str, conversation_id: str) -> list[StoredConversation]:
        """The caller's conversations `conversation_id` names: one it pinned with that id, or one
        found by its history whose keys (the latest, or an earlier one) include it."""

    # User tokens.
    async def tokens(self) -> dict[str, StoredToken]:
        """Every saved token, by fingerprint."""

    async def save_token(self, row: StoredToken) -> None:
        """Insert, or replace the row with the same fingerprint (every field, reasons included)."""

    # Rests: a token resting for one Coze bot, or a Coze bot resting for everyone, until a time.
    async def token_rests(self) -> dict[tuple[str, int], float]:
        """(fingerprint, coze_bot_id) -> until."""

    async def rest_token(self, fingerprint: str, coze_bot_id: int, until: float) -> None:
        """Set (or replace) the rest of a token for one Coze bot."""

    async def model_rests(self) -> dict[int, float]:
        """coze_bot_id -> until."""

    async def rest_model(self, coze_bot_id: int, until: float) -> None:
        """Set (or replace) the rest of a Coze bot."""

    async def drain(self) -> None:
        """Return once every write already started is durable (called before closing)."""
