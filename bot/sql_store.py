"""The `Store` written once in SQL, for SQLite (`bot.sqlite_store`) and PostgreSQL (`bot.postgres_store`).

Each store says only how it runs a read (`_fetch`) and a write (`_write`, its ordered write
queue, `bot.write_queue`); its `Dialect` says what differs in their SQL. The SQL here numbers
its parameters PostgreSQL's way (`$1`), which the SQLite dialect turns into its own (`?1`).
Both keep booleans as they are given: SQLite stores them as 0 and 1, and `bool()` reads either.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from bot.store import StoredConversation, StoredToken
from bot.write_queue import Statement, WriteQueue

TOKEN_COLUMNS = (
    "fingerprint, invalid, day_start, requests_today, invalid_reason, invalid_since, disabled, disabled_since"
)
# A caller's conversations: the threads some conversation still continues in, each with its id
# (the pinned one, or else the latest key; updated_at ties go to the later write). {order} is
# the dialect's column that orders rows by when they were written.
LISTED = """
    SELECT COALESCE(t.pinned, (
            SELECT c.key FROM conversations c WHERE c.thread_id = t.thread_id
            ORDER BY c.updated_at DESC, c.{order} DESC LIMIT 1
        )), t.thread_id, t.model, t.created_at, t.last_used, t.turns, t.pinned IS NOT NULL
    FROM threads t
    WHERE t.caller = $1 AND EXISTS (SELECT 1 FROM conversations c WHERE c.thread_id = t.thread_id)
"""
# A pinned id names its thread; a key names the unpinned thread it maps to.
NAMED = """ AND (t.pinned = $2 OR (t.pinned IS NULL AND t.thread_id IN (
    SELECT thread_id FROM conversations WHERE key = $2)))"""
NEWEST_FIRST = " ORDER BY t.last_used DESC, t.thread_id DESC"
PARAMETER = re.compile(r"\$(\d+)")


class Row(Protocol):
    """A row as either driver returns it (a tuple, an asyncpg Record)."""

    def __getitem__(self, index: int, /) -> Any: ...


class Dialect(ABC):
    """What differs between the stores' SQL: how parameters are written, and how a row is replaced."""

    # The column that orders conversations by when they were written (the latest key wins a tie).
    order: ClassVar[str]

    def sql(self, text: str) -> str:
        """`text`, its parameters written `$n`, as this dialect writes them."""
        return text

    @abstractmethod
    def upsert(self, table: str, columns: str, source: str, *, key: int = 1, newest: bool = False) -> str:
        """Insert `columns` from `source` (VALUES or a SELECT) into `table`, replacing the row
        that has the same first `key` columns; `newest`: the replaced row orders after every
        other (by `order`), as a new one would."""


class SqliteDialect(Dialect):
    order = "rowid"

    def sql(self, text: str) -> str:
        return PARAMETER.sub(r"?\1", text)

    def upsert(self, table: str, columns: str, source: str, *, key: int = 1, newest: bool = False) -> str:
        # REPLACE deletes the old row and inserts anew: always the newest, with a new rowid.
        return f"INSERT OR REPLACE INTO {table} ({columns}) {source}"


class PostgresDialect(Dialect):
    order = "seq"  # conversations' BIGSERIAL

    def upsert(self, table: str, columns: str, source: str, *, key: int = 1, newest: bool = False) -> str:
        names = [name.strip() for name in columns.split(",")]
        replaced = names[key:] + ([self.order] if newest else [])
        updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in replaced)
        conflict = ", ".join(names[:key])
        return f"INSERT INTO {table} ({columns}) {source} ON CONFLICT ({conflict}) DO UPDATE SET {updates}"


class SqlStore(ABC):
    """Meets `bot.store.Store` given its dialect, its write queue and its way to read (`_fetch`)."""

    dialect: ClassVar[Dialect]

    def __init__(self, writes: WriteQueue) -> None:
        self._writes = writes
        # The SQL here as the dialect writes it, translated once: a request makes several writes.
        self._translated: dict[str, str] = {}

    @property
    def commits(self) -> int:
        """Batches committed so far."""
        return self._writes.commits

    @abstractmethod
    async def _fetch(self, sql: str, *params: object) -> Sequence[Row]:
        """The rows `sql` (in the store's dialect) selects; fails at once if the database cannot answer."""

    async def _write(self, *statements: Statement) -> None:
        """Run `statements` (in the store's dialect) together and return once they are committed."""
        await self._writes.write(statements)

    async def drain(self) -> None:
        """Return once every write already started is durable (called before closing)."""
        await self._writes.drain()

    def _sql(self, text: str) -> str:
        sql = self._translated.get(text)
        if sql is None:
            sql = self._translated[text] = self.dialect.sql(text)
        return sql

    async def _select(self, text: str, *params: object) -> Sequence[Row]:
        return await self._fetch(self._sql(text), *params)

    async def _change(self, *statements: Statement) -> None:
        await self._write(*((self._sql(text), params) for text, params in statements))

    async def schema_version(self) -> int:
        rows = await self._select("SELECT version FROM schema_version")
        return int(rows[0][0]) if rows else 0

    # Threads and conversations.
    async def add_thread(self, thread_id: int, model: str, now: float) -> None:
        # Deleting first drops its conversations (the cascade): the thread starts afresh.
        await self._change(
            ("DELETE FROM threads WHERE thread_id = $1", (thread_id,)),
            (
                "INSERT INTO threads (thread_id, model, created_at, last_used) VALUES ($1, $2, $3, $3)",
                (thread_id, model, now),
            ),
        )

    async def idle_threads(self, before: float) -> list[int]:
        rows = await self._select(
            "SELECT thread_id FROM threads WHERE last_used < $1 ORDER BY last_used, thread_id", before
        )
        return [int(row[0]) for row in rows]

    async def forget_thread(self, thread_id: int) -> None:
        await self._change(("DELETE FROM threads WHERE thread_id = $1", (thread_id,)))

    async def find_conversation(self, key: str) -> int | None:
        rows = await self._select("SELECT thread_id FROM conversations WHERE key = $1", key)
        return int(rows[0][0]) if rows else None

    async def remember(
        self, key: str, thread_id: int, now: float, caller: str | None = None, pinned: str | None = None
    ) -> None:
        """Map the conversation to its thread, and count the exchange in the thread."""
        # Selecting the thread, not trusting the caller, makes a thread forgotten meanwhile a
        # quiet no-op instead of a foreign-key failure. In PostgreSQL the UPDATE locks the
        # thread's row first, so a thread forgotten at the same moment is either still there
        # for the INSERT or gone from its SELECT.
        source = "SELECT $1, thread_id, $2 FROM threads WHERE thread_id = $3"
        mapping = self.dialect.upsert("conversations", "key, thread_id, updated_at", source, newest=True)
        await self._change(
            (
                "UPDATE threads SET last_used = $1, caller = $2, pinned = $3, turns = turns + 1 "
                "WHERE thread_id = $4",
                (now, caller, pinned, thread_id),
            ),
            (mapping, (key, now, thread_id)),
        )

    async def conversations(self, caller: str) -> list[StoredConversation]:
        rows = await self._select(self._listed() + NEWEST_FIRST, caller)
        return [_conversation(row) for row in rows]

    async def find_listed(self, caller: str, conversation_id: str) -> list[StoredConversation]:
        rows = await self._select(self._listed() + NAMED + NEWEST_FIRST, caller, conversation_id)
        return [_conversation(row) for row in rows]

    def _listed(self) -> str:
        return LISTED.format(order=self.dialect.order)

    # Accounts.
    async def tokens(self) -> dict[str, StoredToken]:
        rows = await self._select(f"SELECT {TOKEN_COLUMNS} FROM tokens")
        return {row[0]: _token(row) for row in rows}

    async def save_token(self, row: StoredToken) -> None:
        values = (
            row.fingerprint,
            row.invalid,
            row.day_start,
            row.requests_today,
            row.invalid_reason,
            row.invalid_since,
            row.disabled,
            row.disabled_since,
        )
        source = "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        await self._change((self.dialect.upsert("tokens", TOKEN_COLUMNS, source), values))

    async def token_rests(self) -> dict[tuple[str, int], float]:
        rows = await self._select("SELECT fingerprint, coze_bot_id, until FROM token_rests")
        return {(row[0], int(row[1])): float(row[2]) for row in rows}

    async def rest_token(self, fingerprint: str, coze_bot_id: int, until: float) -> None:
        columns = "fingerprint, coze_bot_id, until"
        upsert = self.dialect.upsert("token_rests", columns, "VALUES ($1, $2, $3)", key=2)
        await self._change((upsert, (fingerprint, coze_bot_id, until)))

    async def model_rests(self) -> dict[int, float]:
        rows = await self._select("SELECT coze_bot_id, until FROM model_rests")
        return {int(row[0]): float(row[1]) for row in rows}

    async def rest_model(self, coze_bot_id: int, until: float) -> None:
        upsert = self.dialect.upsert("model_rests", "coze_bot_id, until", "VALUES ($1, $2)")
        await self._change((upsert, (coze_bot_id, until)))


def _conversation(row: Row) -> StoredConversation:
    return StoredConversation(
        row[0], int(row[1]), row[2], float(row[3]), float(row[4]), int(row[5]), pinned=bool(row[6])
    )


def _token(row: Row) -> StoredToken:
    return StoredToken(
        row[0],
        bool(row[1]),
        float(row[2]),
        int(row[3]),
        invalid_reason=row[4],
        invalid_since=None if row[5] is None else float(row[5]),
        disabled=bool(row[6]),
        disabled_since=None if row[7] is None else float(row[7]),
    )
