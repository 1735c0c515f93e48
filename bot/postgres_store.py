"""The `Store` in PostgreSQL, so that several bridges can share their state (issue 15).

asyncpg, with a pool of connections. Writes queue in order and commit in batches, and outlast
an unreachable server (`bot.postgres_writes`); reads fail at once. The schema has the versions
of `bot.sqlite_store`, in PostgreSQL's types; bridges that start together migrate once, one
after the other, under an advisory lock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import asyncpg

from bot.interface import StartupError
from bot.postgres_writes import CLIENT_FAILURES as CLIENT_FAILURES  # where others look for it
from bot.postgres_writes import FAILURES, LAST_TRY_SECONDS, Statement, Writes, connection
from bot.sqlite_store import SCHEMA_VERSION
from bot.store import StoredConversation, StoredToken

# MIGRATIONS[n] takes a database from version n to n + 1, as bot.sqlite_store's do.
MIGRATIONS: tuple[str, ...] = (
    # 1: threads, conversations, user-token health. `seq` orders conversations remembered at
    # the same time, as SQLite's rowid does: a replaced mapping takes a new one.
    """
    CREATE TABLE threads (
        thread_id BIGINT PRIMARY KEY,
        model TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        last_used DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX threads_last_used ON threads (last_used);
    CREATE TABLE conversations (
        key TEXT PRIMARY KEY,
        thread_id BIGINT NOT NULL REFERENCES threads (thread_id) ON DELETE CASCADE,
        updated_at DOUBLE PRECISION NOT NULL,
        seq BIGSERIAL NOT NULL
    );
    CREATE INDEX conversations_thread ON conversations (thread_id);
    CREATE TABLE tokens (
        fingerprint TEXT PRIMARY KEY,
        invalid BOOLEAN NOT NULL DEFAULT FALSE,
        day_start DOUBLE PRECISION NOT NULL DEFAULT 0,
        requests_today INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE token_rests (
        fingerprint TEXT NOT NULL,
        coze_bot_id BIGINT NOT NULL,
        until DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (fingerprint, coze_bot_id)
    );
    """,
    # 2: a Coze bot whose owner ran out of credits rests as a whole.
    """
    CREATE TABLE model_rests (
        coze_bot_id BIGINT PRIMARY KEY,
        until DOUBLE PRECISION NOT NULL
    );
    """,
    # 3: why and since when a token is invalid, and an admin's disable.
    """
    ALTER TABLE tokens
        ADD COLUMN invalid_reason TEXT,
        ADD COLUMN invalid_since DOUBLE PRECISION,
        ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE,
        ADD COLUMN disabled_since DOUBLE PRECISION;
    """,
    # 4: whose conversation a thread holds, the id pinned, if any, and the exchanges made in it.
    """
    ALTER TABLE threads
        ADD COLUMN caller TEXT,
        ADD COLUMN pinned TEXT,
        ADD COLUMN turns INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX threads_caller ON threads (caller, last_used);
    """,
)
# Any fixed number, the same in every bridge: "cozemigr".
MIGRATION_LOCK = 0x636F7A656D696772
TOKEN_COLUMNS = (
    "fingerprint, invalid, day_start, requests_today, invalid_reason, invalid_since, disabled, disabled_since"
)
LISTED = """
    SELECT COALESCE(t.pinned, (
            SELECT c.key FROM conversations c WHERE c.thread_id = t.thread_id
            ORDER BY c.updated_at DESC, c.seq DESC LIMIT 1
        )), t.thread_id, t.model, t.created_at, t.last_used, t.turns, t.pinned IS NOT NULL
    FROM threads t
    WHERE t.caller = $1 AND EXISTS (SELECT 1 FROM conversations c WHERE c.thread_id = t.thread_id)
"""
NEWEST_FIRST = " ORDER BY t.last_used DESC, t.thread_id DESC"
POOL_SIZE = 10
CONNECT_SECONDS = 10.0
DEFAULT_PORT = 5432

if TYPE_CHECKING:
    from bot.postgres_writes import Connection, Pool


class PostgresStore:
    """Meets `bot.store.Store`; open it with `open_postgres_store`."""

    def __init__(self, pool: Pool, *, last_try: float = LAST_TRY_SECONDS) -> None:
        self._pool = pool
        self._writes = Writes(pool, last_try=last_try)
        # Migration steps this store applied when it opened (0: another bridge had, or none were due).
        self.applied = 0

    @property
    def available(self) -> bool:
        """False while writes wait for an unreachable server; True again after a commit."""
        return self._writes.available

    @property
    def commits(self) -> int:
        """Batches committed so far."""
        return self._writes.commits

    def _connection(self) -> AbstractAsyncContextManager[Connection]:
        return connection(self._pool)

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        async with self._connection() as db:
            return await db.fetch(sql, *args)

    async def schema_version(self) -> int:
        rows = await self._fetch("SELECT version FROM schema_version")
        return int(rows[0][0]) if rows else 0

    async def _migrate(self, target: int) -> None:
        async with self._connection() as db, db.transaction():
            # Held to the end of the transaction: a bridge starting meanwhile waits here, then
            # finds the schema done. The lock comes first, as two CREATE ... IF NOT EXISTS at
            # once can still collide.
            await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = int(await db.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
            if version > SCHEMA_VERSION:
                raise StartupError(
                    f"the database has schema {version}, newer than this bridge's {SCHEMA_VERSION}: "
                    "a newer bridge wrote it"
                )
            for step in range(version, target):
                await db.execute(MIGRATIONS[step])
                self.applied += 1
            if target > version:
                await db.execute("DELETE FROM schema_version")
                await db.execute("INSERT INTO schema_version VALUES ($1)", target)

    # Threads and conversations.
    async def add_thread(self, thread_id: int, model: str, now: float) -> None:
        # Deleting first drops its conversations (the cascade), as SQLite's INSERT OR REPLACE does.
        await self._write(
            ("DELETE FROM threads WHERE thread_id = $1", (thread_id,)),
            (
                "INSERT INTO threads (thread_id, model, created_at, last_used) VALUES ($1, $2, $3, $3)",
                (thread_id, model, now),
            ),
        )

    async def idle_threads(self, before: float) -> list[int]:
        rows = await self._fetch(
            "SELECT thread_id FROM threads WHERE last_used < $1 ORDER BY last_used, thread_id", before
        )
        return [int(row[0]) for row in rows]

    async def forget_thread(self, thread_id: int) -> None:
        await self._write(("DELETE FROM threads WHERE thread_id = $1", (thread_id,)))

    async def find_conversation(self, key: str) -> int | None:
        rows = await self._fetch("SELECT thread_id FROM conversations WHERE key = $1", key)
        return int(rows[0][0]) if rows else None

    async def remember(
        self, key: str, thread_id: int, now: float, caller: str | None = None, pinned: str | None = None
    ) -> None:
        """Map the conversation to its thread, and count the exchange in the thread."""
        # The UPDATE locks the thread's row first, so a thread forgotten at the same moment is
        # either still there for the INSERT or gone from its SELECT: never a foreign-key failure.
        await self._write(
            (
                "UPDATE threads SET last_used = $1, caller = $2, pinned = $3, turns = turns + 1 "
                "WHERE thread_id = $4",
                (now, caller, pinned, thread_id),
            ),
            (
                "INSERT INTO conversations (key, thread_id, updated_at) "
                "SELECT $1, thread_id, $2 FROM threads WHERE thread_id = $3 "
                "ON CONFLICT (key) DO UPDATE SET thread_id = EXCLUDED.thread_id, "
                "updated_at = EXCLUDED.updated_at, seq = EXCLUDED.seq",
                (key, now, thread_id),
            ),
        )

    async def conversations(self, caller: str) -> list[StoredConversation]:
        return [_conversation(row) for row in await self._fetch(LISTED + NEWEST_FIRST, caller)]

    async def find_listed(self, caller: str, conversation_id: str) -> list[StoredConversation]:
        # A pinned id names its thread; a key names the unpinned thread it maps to.
        named = """ AND (t.pinned = $2 OR (t.pinned IS NULL AND t.thread_id IN (
            SELECT thread_id FROM conversations WHERE key = $2)))"""
        rows = await self._fetch(LISTED + named + NEWEST_FIRST, caller, conversation_id)
        return [_conversation(row) for row in rows]

    # Accounts.
    async def tokens(self) -> dict[str, StoredToken]:
        rows = await self._fetch(f"SELECT {TOKEN_COLUMNS} FROM tokens")
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
        replaced = ", ".join(f"{name} = EXCLUDED.{name}" for name in TOKEN_COLUMNS.split(", ")[1:])
        await self._write(
            (
                f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                f"ON CONFLICT (fingerprint) DO UPDATE SET {replaced}",
                values,
            )
        )

    async def token_rests(self) -> dict[tuple[str, int], float]:
        rows = await self._fetch("SELECT fingerprint, coze_bot_id, until FROM token_rests")
        return {(row[0], int(row[1])): float(row[2]) for row in rows}

    async def rest_token(self, fingerprint: str, coze_bot_id: int, until: float) -> None:
        await self._write(
            (
                "INSERT INTO token_rests VALUES ($1, $2, $3) "
                "ON CONFLICT (fingerprint, coze_bot_id) DO UPDATE SET until = EXCLUDED.until",
                (fingerprint, coze_bot_id, until),
            )
        )

    async def model_rests(self) -> dict[int, float]:
        rows = await self._fetch("SELECT coze_bot_id, until FROM model_rests")
        return {int(row[0]): float(row[1]) for row in rows}

    async def rest_model(self, coze_bot_id: int, until: float) -> None:
        await self._write(
            (
                "INSERT INTO model_rests VALUES ($1, $2) "
                "ON CONFLICT (coze_bot_id) DO UPDATE SET until = EXCLUDED.until",
                (coze_bot_id, until),
            )
        )

    async def _write(self, *statements: Statement) -> None:
        """Run `statements` together and return once they are committed."""
        await self._writes.write(statements)

    async def drain(self) -> None:
        """Wait for every queued write (before closing the pool)."""
        await self._writes.drain()


def _conversation(row: asyncpg.Record) -> StoredConversation:
    return StoredConversation(
        row[0], int(row[1]), row[2], float(row[3]), float(row[4]), int(row[5]), pinned=bool(row[6])
    )


def _token(row: asyncpg.Record) -> StoredToken:
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


def describe(url: str) -> str:
    """`host:port/database` of a PostgreSQL URL, for errors and logs (never the password)."""
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        port = None
    database = unquote(parts.path.lstrip("/")) or unquote(parts.username or "") or "postgres"
    return f"{parts.hostname or 'localhost'}:{port or '?'}/{database}"


def _reason(exc: BaseException, url: str) -> str:
    reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
    password = urlsplit(url).password
    if password:
        reason = reason.replace(password, "***").replace(unquote(password), "***")
    return " ".join(reason.split())  # one line, whatever the driver said


@asynccontextmanager
async def open_postgres_store(
    url: str,
    *,
    schema: int = SCHEMA_VERSION,
    pool_size: int = POOL_SIZE,
    connect_timeout: float = CONNECT_SECONDS,
    last_try: float = LAST_TRY_SECONDS,
) -> AsyncIterator[PostgresStore]:
    """Connect, and migrate to `schema` (tests pass an older one); StartupError if it cannot."""
    where = describe(url)
    try:
        pool: Pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size, timeout=connect_timeout)
    except (*FAILURES, ValueError) as exc:
        raise StartupError(f"cannot reach PostgreSQL at {where}: {_reason(exc, url)}") from None
    try:
        store = PostgresStore(pool, last_try=last_try)
        try:
            await store._migrate(schema)
        except FAILURES as exc:
            raise StartupError(f"cannot use PostgreSQL at {where}: {_reason(exc, url)}") from None
        try:
            yield store
        finally:
            await store.drain()
    finally:
        await pool.close()
