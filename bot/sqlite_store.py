"""The `Store` in SQLite, so threads, conversations, tokens and rests survive a restart.

One aiosqlite connection (WAL, so readers never block). A write returns once committed, but
writes that arrive together share one commit: at a thousand open streams a commit each would
cost more than the rest of the request. Each write sits in its own savepoint, so a failed one
leaves nothing of itself and spoils none of the others. The schema is versioned:
`MIGRATIONS[n]` takes a database from version n to n + 1.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from bot.store import StoredToken

MIGRATIONS: tuple[str, ...] = (
    # 1: threads the bridge created, conversations continuing in them, user-token health.
    """
    CREATE TABLE threads (
        thread_id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_used REAL NOT NULL
    );
    CREATE INDEX threads_last_used ON threads (last_used);
    CREATE TABLE conversations (
        key TEXT PRIMARY KEY,
        thread_id INTEGER NOT NULL REFERENCES threads (thread_id) ON DELETE CASCADE,
        updated_at REAL NOT NULL
    );
    CREATE INDEX conversations_thread ON conversations (thread_id);
    CREATE TABLE tokens (
        fingerprint TEXT PRIMARY KEY,
        invalid INTEGER NOT NULL DEFAULT 0,
        day_start REAL NOT NULL DEFAULT 0,
        requests_today INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE token_rests (
        fingerprint TEXT NOT NULL,
        coze_bot_id INTEGER NOT NULL,
        until REAL NOT NULL,
        PRIMARY KEY (fingerprint, coze_bot_id)
    );
    """,
    # 2: a Coze bot whose owner ran out of credits rests as a whole.
    """
    CREATE TABLE model_rests (
        coze_bot_id INTEGER PRIMARY KEY,
        until REAL NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


Statement = tuple[str, tuple[object, ...]]


class SqliteStore:
    """Meets `bot.store.Store`; open it with `open_sqlite_store`."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._queued: list[tuple[tuple[Statement, ...], asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None
        self.commits = 0

    async def schema_version(self) -> int:
        async with self._db.execute("SELECT version FROM schema_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def _migrate(self, target: int) -> None:
        await self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = await self.schema_version()
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database has schema {version}, newer than this bridge's {SCHEMA_VERSION}"
            )
        for step in range(version, target):
            # executescript commits first; each step then records its own version in one transaction.
            await self._db.executescript(
                f"BEGIN; {MIGRATIONS[step]}; DELETE FROM schema_version;"
                f"INSERT INTO schema_version VALUES ({step + 1}); COMMIT;"
            )

    # Threads and conversations.
    async def add_thread(self, thread_id: int, model: str, now: float) -> None:
        await self._write(
            ("INSERT OR REPLACE INTO threads VALUES (?, ?, ?, ?)", (thread_id, model, now, now))
        )

    async def idle_threads(self, before: float) -> list[int]:
        async with self._db.execute(
            "SELECT thread_id FROM threads WHERE last_used < ? ORDER BY last_used, thread_id", (before,)
        ) as cursor:
            return [int(row[0]) for row in await cursor.fetchall()]

    async def forget_thread(self, thread_id: int) -> None:
        await self._write(("DELETE FROM threads WHERE thread_id = ?", (thread_id,)))

    async def find_conversation(self, key: str) -> int | None:
        async with self._db.execute("SELECT thread_id FROM conversations WHERE key = ?", (key,)) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else None

    async def remember(self, key: str, thread_id: int, now: float) -> None:
        """Map the conversation to its thread, and mark the thread used."""
        # Selecting the thread, not trusting the caller, makes a thread forgotten meanwhile a
        # quiet no-op instead of a foreign-key failure.
        await self._write(
            ("UPDATE threads SET last_used = ? WHERE thread_id = ?", (now, thread_id)),
            (
                "INSERT OR REPLACE INTO conversations SELECT ?, thread_id, ? FROM threads WHERE thread_id = ?",
                (key, now, thread_id),
            ),
        )

    # Accounts.
    async def tokens(self) -> dict[str, StoredToken]:
        async with self._db.execute("SELECT * FROM tokens") as cursor:
            rows = await cursor.fetchall()
        return {row[0]: StoredToken(row[0], bool(row[1]), float(row[2]), int(row[3])) for row in rows}

    async def save_token(self, row: StoredToken) -> None:
        await self._write(
            (
                "INSERT OR REPLACE INTO tokens VALUES (?, ?, ?, ?)",
                (row.fingerprint, int(row.invalid), row.day_start, row.requests_today),
            )
        )

    async def token_rests(self) -> dict[tuple[str, int], float]:
        async with self._db.execute("SELECT fingerprint, coze_bot_id, until FROM token_rests") as cursor:
            return {(row[0], int(row[1])): float(row[2]) for row in await cursor.fetchall()}

    async def rest_token(self, fingerprint: str, coze_bot_id: int, until: float) -> None:
        await self._write(
            ("INSERT OR REPLACE INTO token_rests VALUES (?, ?, ?)", (fingerprint, coze_bot_id, until))
        )

    async def model_rests(self) -> dict[int, float]:
        async with self._db.execute("SELECT coze_bot_id, until FROM model_rests") as cursor:
            return {int(row[0]): float(row[1]) for row in await cursor.fetchall()}

    async def rest_model(self, coze_bot_id: int, until: float) -> None:
        await self._write(("INSERT OR REPLACE INTO model_rests VALUES (?, ?)", (coze_bot_id, until)))

    async def _write(self, *statements: Statement) -> None:
        """Run `statements` together and return once they are committed."""
        committed = asyncio.get_running_loop().create_future()
        self._queued.append((statements, committed))
        if self._committer is None:
            self._committer = asyncio.get_running_loop().create_task(self._commit_queued(), name="sqlite")
        # A caller that gives up (its request was cancelled) still has its write committed.
        await asyncio.shield(committed)

    async def _commit_queued(self) -> None:
        """Commit what is queued; what queues up meanwhile goes into the next commit."""
        batch: list[tuple[tuple[Statement, ...], asyncio.Future[None]]] = []
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                outcomes = await self._run([statements for statements, _ in batch])
                for (_, committed), outcome in zip(batch, outcomes, strict=True):
                    if outcome is None:
                        committed.set_result(None)
                    else:
                        committed.set_exception(outcome)
        except BaseException as exc:
            # The writers learn of it from their own futures; nothing is left waiting.
            for _, committed in batch + self._queued:
                if committed.done():
                    continue
                if isinstance(exc, Exception):
                    committed.set_exception(exc)
                else:
                    committed.cancel()
            self._queued = []
            if not isinstance(exc, Exception):
                raise
        finally:
            self._committer = None

    async def _run(self, batch: Sequence[tuple[Statement, ...]]) -> list[sqlite3.Error | None]:
        """Each write's statements, then one commit; a failed write does not spoil the others."""
        outcomes: list[sqlite3.Error | None] = []
        try:
            await self._db.execute("BEGIN")
            for statements in batch:
                await self._db.execute("SAVEPOINT write")
                try:
                    for sql, params in statements:
                        await self._db.execute(sql, params)
                except sqlite3.Error as exc:
                    if not self._db.in_transaction:
                        # Some errors (disk full, I/O) make SQLite roll back the whole transaction:
                        # the writes before this one are lost too, and must not be told otherwise.
                        raise
                    await self._db.execute("ROLLBACK TO write")
                    await self._db.execute("RELEASE write")
                    outcomes.append(exc)
                else:
                    await self._db.execute("RELEASE write")
                    outcomes.append(None)
            await self._db.commit()
        except sqlite3.Error as exc:
            # Nothing of the batch is kept, and the next batch starts outside any transaction.
            await self._db.rollback()
            return [exc] * len(batch)
        self.commits += 1
        return outcomes

    async def drain(self) -> None:
        """Wait for every queued write (before closing the connection)."""
        while self._committer is not None:
            await asyncio.shield(self._committer)


@asynccontextmanager
async def open_sqlite_store(path: Path, *, schema: int = SCHEMA_VERSION) -> AsyncIterator[SqliteStore]:
    """Open (creating the file and its folder) and migrate to `schema`; tests pass an older one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    async with aiosqlite.connect(path) as db:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        store = SqliteStore(db)
        await store._migrate(schema)
        try:
            yield store
        finally:
            await store.drain()
