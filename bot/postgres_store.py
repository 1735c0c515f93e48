"""The `Store` in PostgreSQL, so that several bridges can share their state (issue 15).

asyncpg, with a pool of connections. Writes queue in order and commit in batches, and outlast
an unreachable server (`bot.postgres_writes`); reads fail at once. The schema has the versions
of `bot.sqlite_store`, in PostgreSQL's types; bridges that start together migrate once, one
after the other, under an advisory lock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import asyncpg

from bot.interface import StartupError
from bot.postgres_writes import CLIENT_FAILURES as CLIENT_FAILURES  # where others look for it
from bot.postgres_writes import FAILURES, LAST_TRY_SECONDS, Writes, connection
from bot.sql_store import PostgresDialect, SqlStore
from bot.sqlite_store import SCHEMA_VERSION

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
POOL_SIZE = 10
CONNECT_SECONDS = 10.0
DEFAULT_PORT = 5432

if TYPE_CHECKING:
    from bot.postgres_writes import Pool


class PostgresStore(SqlStore):
    """Meets `bot.store.Store`; open it with `open_postgres_store`."""

    dialect = PostgresDialect()
    _writes: Writes  # the queue the store is given: it knows whether the server answers

    def __init__(self, pool: Pool, *, last_try: float = LAST_TRY_SECONDS) -> None:
        super().__init__(Writes(pool, last_try=last_try))
        self._pool = pool
        # Migration steps this store applied when it opened (0: another bridge had, or none were due).
        self.applied = 0

    @property
    def available(self) -> bool:
        """False while writes wait for an unreachable server; True again after a commit."""
        return self._writes.available

    async def _fetch(self, sql: str, *params: object) -> list[asyncpg.Record]:
        async with connection(self._pool) as db:
            return await db.fetch(sql, *params)

    async def _migrate(self, target: int) -> None:
        async with connection(self._pool) as db, db.transaction():
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


async def connect_pool(url: str, *, min_size: int, max_size: int, connect_seconds: float) -> Pool:
    """A pool of connections to `url`; StartupError (one line, no password) if it cannot."""
    try:
        return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, timeout=connect_seconds)
    except (*FAILURES, ValueError) as exc:
        raise StartupError(f"cannot reach PostgreSQL at {describe(url)}: {_reason(exc, url)}") from None


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
    pool = await connect_pool(url, min_size=1, max_size=pool_size, connect_seconds=connect_timeout)
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
