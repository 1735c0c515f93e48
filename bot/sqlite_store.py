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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

from bot.interface import StartupError
from bot.sql_store import Row, SqliteDialect, SqlStore
from bot.write_queue import Write, WriteQueue

T = TypeVar("T")
# Each write's: None once committed, or why it failed.
Outcomes = list[sqlite3.Error | None]

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
SCHEMA_VERSION = len(MIGRATIONS)
# How long a first write waits for others to share its commit. Nobody's bytes wait on a write
# (the bridge writes behind), so a longer window only trades a little durability for fewer
# commits and thread hops: at a thousand open streams, one a request was a fifth of the CPU.
BATCH_WINDOW = 0.05


class SqliteStore(SqlStore):
    """Meets `bot.store.Store`; open it with `open_sqlite_store`."""

    dialect = SqliteDialect()

    def __init__(
        self, db: sqlite3.Connection, worker: ThreadPoolExecutor, *, window: float = BATCH_WINDOW
    ) -> None:
        super().__init__(_Writes(self._commit, window))
        self._db = db  # touched only in the worker thread
        self._worker = worker

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` with the connection, in the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, self._db)

    async def _fetch(self, sql: str, *params: object) -> list[Row]:
        return await self.call(lambda db: db.execute(sql, params).fetchall())

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

    async def _commit(self, batch: Sequence[Write]) -> Outcomes:
        return await self.call(partial(_run, batch=batch))


class _Writes(WriteQueue):
    """Batches of the writes that arrive within `window` of the first, one commit each."""

    def __init__(self, commit: Callable[[Sequence[Write]], Awaitable[Outcomes]], window: float) -> None:
        super().__init__("sqlite")
        self._commit = commit  # in the worker thread, one commit: each write's outcome
        self._window = window

    async def _commit_queued(self) -> None:
        await asyncio.sleep(self._window)
        while self._queued:
            batch = self._take()
            outcomes = await self._commit([statements for statements, _ in batch])
            self.commits += 1
            for (_, committed), outcome in zip(batch, outcomes, strict=True):
                self._settle(committed, outcome)


def _script(db: sqlite3.Connection, *, script: str) -> None:
    db.executescript(script)


def _run(db: sqlite3.Connection, *, batch: Sequence[Write]) -> Outcomes:
    """In the worker: each write's statements, then one commit; a failed write spoils no other."""
    outcomes: Outcomes = []
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
