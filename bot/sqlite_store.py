"""The `Store` in SQLite, so threads, conversations, tokens and rests survive a restart.

One connection, used from one worker thread (WAL, so readers never block). A write returns
once committed, but writes that arrive together share one commit, and the whole batch is one
call into the worker: at a thousand open streams a commit, or a thread hop, per statement
would cost more than the rest of the request (aiosqlite makes one hop per statement, which
is why this store drives `sqlite3` itself). Each write sits in its own savepoint, so a failed
one leaves nothing of itself and spoils none of the others. The schema is versioned:
`MIGRATIONS[n]` takes a database from version n to n + 1.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from bot.interface import StartupError
from bot.store import StoredConversation, StoredToken

T = TypeVar("T")

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
    # 3: why and since when a token is invalid, and an admin's disable.
    """
    ALTER TABLE tokens ADD COLUMN invalid_reason TEXT;
    ALTER TABLE tokens ADD COLUMN invalid_since REAL;
    ALTER TABLE tokens ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tokens ADD COLUMN disabled_since REAL;
    """,
    # 4: whose conversation a thread holds (a fingerprint of the API key), the id pinned, if any,
    # and the exchanges made in it. Threads from before are nobody's: listed to no one.
    """
    ALTER TABLE threads ADD COLUMN caller TEXT;
    ALTER TABLE threads ADD COLUMN pinned TEXT;
    ALTER TABLE threads ADD COLUMN turns INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX threads_caller ON threads (caller, last_used);
    """,
)
TOKEN_COLUMNS = (
    "fingerprint, invalid, day_start, requests_today, invalid_reason, invalid_since, disabled, disabled_since"
)
SCHEMA_VERSION = len(MIGRATIONS)
# A caller's conversations: the threads some conversation still continues in, each with its id
# (the pinned one, or else the latest key; updated_at ties go to the later write).
LISTED = """
    SELECT COALESCE(t.pinned, (
            SELECT c.key FROM conversations c WHERE c.thread_id = t.thread_id
            ORDER BY c.updated_at DESC, c.rowid DESC LIMIT 1
        )), t.thread_id, t.model, t.created_at, t.last_used, t.turns, t.pinned IS NOT NULL
    FROM threads t
    WHERE t.caller = ? AND EXISTS (SELECT 1 FROM conversations c WHERE c.thread_id = t.thread_id)
"""
NEWEST_FIRST = " ORDER BY t.last_used DESC, t.thread_id DESC"
# How long a first write waits for others to share its commit. Nobody's bytes wait on a write
# (the bridge writes behind), so a longer window only trades a little durability for fewer
# commits and thread hops: at a thousand open streams, one a request was a fifth of the CPU.
BATCH_WINDOW = 0.05


Statement = tuple[str, tuple[object, ...]]
Row = tuple[Any, ...]


class SqliteStore:
    """Meets `bot.store.Store`; open it with `open_sqlite_store`."""

    def __init__(
        self, db: sqlite3.Connection, worker: ThreadPoolExecutor, *, window: float = BATCH_WINDOW
    ) -> None:
        self._db = db  # touched only in the worker thread
        self._worker = worker
        self._window = window
        self._queued: list[tuple[tuple[Statement, ...], asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None
        self.commits = 0

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` with the connection, in the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, self._db)

    async def _rows(self, sql: str, *params: object) -> list[Row]:
        return await self.call(lambda db: db.execute(sql, params).fetchall())

    async def schema_version(self) -> int:
        rows = await self._rows("SELECT version FROM schema_version")
        return int(rows[0][0]) if rows else 0

    async def _migrate(self, target: int) -> None:
        await self.call(
            lambda db: db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        )
        version = await self.schema_version()
        if version > SCHEMA_VERSION:
            raise StartupError(
                f"the database has schema {version}, newer than this bridge's {SCHEMA_VERSION}: "
                "a newer bridge wrote it"
            )
        for step in range(version, target):
            # Each step records its own version in the same transaction.
            script = (
                f"BEGIN; {MIGRATIONS[step]}; DELETE FROM schema_version;"
                f"INSERT INTO schema_version VALUES ({step + 1}); COMMIT;"
            )
            await self.call(partial(_script, script=script))

    # Threads and conversations.
    async def add_thread(self, thread_id: int, model: str, now: float) -> None:
        await self._write(
            (
                "INSERT OR REPLACE INTO threads (thread_id, model, created_at, last_used) VALUES (?, ?, ?, ?)",
                (thread_id, model, now, now),
            )
        )

    async def idle_threads(self, before: float) -> list[int]:
        rows = await self._rows(
            "SELECT thread_id FROM threads WHERE last_used < ? ORDER BY last_used, thread_id", before
        )
        return [int(row[0]) for row in rows]

    async def forget_thread(self, thread_id: int) -> None:
        await self._write(("DELETE FROM threads WHERE thread_id = ?", (thread_id,)))

    async def find_conversation(self, key: str) -> int | None:
        rows = await self._rows("SELECT thread_id FROM conversations WHERE key = ?", key)
        return int(rows[0][0]) if rows else None

    async def remember(
        self, key: str, thread_id: int, now: float, caller: str | None = None, pinned: str | None = None
    ) -> None:
        """Map the conversation to its thread, and count the exchange in the thread."""
        # Selecting the thread, not trusting the caller, makes a thread forgotten meanwhile a
        # quiet no-op instead of a foreign-key failure.
        await self._write(
            (
                "UPDATE threads SET last_used = ?, caller = ?, pinned = ?, turns = turns + 1 WHERE thread_id = ?",
                (now, caller, pinned, thread_id),
            ),
            (
                "INSERT OR REPLACE INTO conversations SELECT ?, thread_id, ? FROM threads WHERE thread_id = ?",
                (key, now, thread_id),
            ),
        )

    async def conversations(self, caller: str) -> list[StoredConversation]:
        return [_conversation(row) for row in await self._rows(LISTED + NEWEST_FIRST, caller)]

    async def find_listed(self, caller: str, conversation_id: str) -> list[StoredConversation]:
        # A pinned id names its thread; a key names the unpinned thread it maps to.
        named = """ AND (t.pinned = ? OR (t.pinned IS NULL AND t.thread_id IN (
            SELECT thread_id FROM conversations WHERE key = ?)))"""
        rows = await self._rows(LISTED + named + NEWEST_FIRST, caller, conversation_id, conversation_id)
        return [_conversation(row) for row in rows]

    # Accounts.
    async def tokens(self) -> dict[str, StoredToken]:
        rows = await self._rows(f"SELECT {TOKEN_COLUMNS} FROM tokens")
        return {row[0]: _token(row) for row in rows}

    async def save_token(self, row: StoredToken) -> None:
        values = (
            row.fingerprint,
            int(row.invalid),
            row.day_start,
            row.requests_today,
            row.invalid_reason,
            row.invalid_since,
            int(row.disabled),
            row.disabled_since,
        )
        await self._write(
            (f"INSERT OR REPLACE INTO tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
        )

    async def token_rests(self) -> dict[tuple[str, int], float]:
        rows = await self._rows("SELECT fingerprint, coze_bot_id, until FROM token_rests")
        return {(row[0], int(row[1])): float(row[2]) for row in rows}

    async def rest_token(self, fingerprint: str, coze_bot_id: int, until: float) -> None:
        await self._write(
            ("INSERT OR REPLACE INTO token_rests VALUES (?, ?, ?)", (fingerprint, coze_bot_id, until))
        )

    async def model_rests(self) -> dict[int, float]:
        rows = await self._rows("SELECT coze_bot_id, until FROM model_rests")
        return {int(row[0]): float(row[1]) for row in rows}

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
            await asyncio.sleep(self._window)
            while self._queued:
                batch, self._queued = self._queued, []
                writes = [statements for statements, _ in batch]
                outcomes = await self.call(partial(_run, batch=writes))
                self.commits += 1
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

    async def drain(self) -> None:
        """Wait for every queued write (before closing the connection)."""
        while self._committer is not None:
            await asyncio.shield(self._committer)


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


def _script(db: sqlite3.Connection, *, script: str) -> None:
    db.executescript(script)


def _run(db: sqlite3.Connection, *, batch: Sequence[tuple[Statement, ...]]) -> list[sqlite3.Error | None]:
    """In the worker: each write's statements, then one commit; a failed write spoils no other."""
    outcomes: list[sqlite3.Error | None] = []
    try:
        db.execute("BEGIN")
        for statements in batch:
            db.execute("SAVEPOINT write")
            try:
                for sql, params in statements:
                    db.execute(sql, params)
            except sqlite3.Error as exc:
                if not db.in_transaction:
                    # Some errors (disk full, I/O) make SQLite roll back the whole transaction:
                    # the writes before this one are lost too, and must not be told otherwise.
                    raise
                db.execute("ROLLBACK TO write")
                db.execute("RELEASE write")
                outcomes.append(exc)
            else:
                db.execute("RELEASE write")
                outcomes.append(None)
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        # Nothing of the batch is kept, and the next batch starts outside any transaction.
        if db.in_transaction:
            db.rollback()
        return [exc] * len(batch)
    return outcomes


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: the store says BEGIN and COMMIT itself.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")
    return db


@asynccontextmanager
async def open_sqlite_store(
    path: Path, *, schema: int = SCHEMA_VERSION, window: float = BATCH_WINDOW
) -> AsyncIterator[SqliteStore]:
    """Open (creating the file and its folder) and migrate to `schema`; tests pass an older one."""
    loop = asyncio.get_running_loop()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = await loop.run_in_executor(worker, _connect, path)
        except (OSError, sqlite3.Error) as exc:
            raise StartupError(f"cannot open the database {path}: {exc}") from None
        try:
            store = SqliteStore(db, worker, window=window)
            try:
                await store._migrate(schema)
            except sqlite3.Error as exc:
                raise StartupError(f"cannot use the database {path}: {exc}") from None
            try:
                yield store
            finally:
                await store.drain()
        finally:
            await loop.run_in_executor(worker, db.close)
    finally:
        worker.shutdown(wait=False)
