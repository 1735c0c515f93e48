"""The statements of `bot.postgres_coordinator`: its tables, and one function per operation.

A run is one process (a random id); it is live while its last heartbeat (`seen`, on the
database's clock) is younger than its lease. Everything a run holds names its run_id, so a dead
run's holds, flights, claim and lead stop counting the moment its lease runs out, and the next
heartbeat of any live run deletes them (`reap`). The tables are the coordinator's own, made
idempotently under an advisory lock, apart from `bot.postgres_store`'s migrations.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from bot.coordination import InstanceInfo, SharedToken
from bot.memory_coordinator import refusal

if TYPE_CHECKING:  # asyncpg's classes are generic in its stubs only
    import asyncpg

    Pool = asyncpg.Pool[asyncpg.Record]
    Connection = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]

CHANNEL = "coze_bridge"
# Any fixed number, the same in every bridge, not bot.postgres_store's: "cozecord".
LOCK = 0x636F7A65636F7264
NOW = "extract(epoch FROM clock_timestamp())::float8"
LIVE = f"(SELECT run_id FROM bridge_runs WHERE seen + lease > {NOW})"
SCHEMA = """
CREATE TABLE IF NOT EXISTS bridge_runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    started DOUBLE PRECISION NOT NULL,
    seen DOUBLE PRECISION NOT NULL,
    lease DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS conversation_holds (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    since DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS token_gates (
    fingerprint TEXT PRIMARY KEY,
    ready_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    claim_run TEXT,
    claim_flight TEXT,
    day_start DOUBLE PRECISION NOT NULL DEFAULT 0,
    posts_today INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS token_flights (
    fingerprint TEXT NOT NULL,
    flight TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (fingerprint, flight)
);
CREATE TABLE IF NOT EXISTS bridge_leader (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    run_id TEXT NOT NULL
);
"""
# What a run leaves behind once it is gone: deleted together, after the runs themselves.
ORPHANS = (
    "DELETE FROM conversation_holds WHERE run_id NOT IN (SELECT run_id FROM bridge_runs)",
    "DELETE FROM token_flights WHERE run_id NOT IN (SELECT run_id FROM bridge_runs)",
    "UPDATE token_gates SET claim_run = NULL, claim_flight = NULL "
    "WHERE claim_run NOT IN (SELECT run_id FROM bridge_runs)",
    "DELETE FROM bridge_leader WHERE run_id NOT IN (SELECT run_id FROM bridge_runs)",
)


async def create_schema(db: Connection) -> None:
    async with db.transaction():
        # Two CREATE ... IF NOT EXISTS at once can still collide: bridges starting together queue.
        await db.execute("SELECT pg_advisory_xact_lock($1)", LOCK)
        await db.execute(SCHEMA)


async def join(db: Connection, run: str, name: str, lease: float) -> float:
    """Add the run and return when it started (NameTaken if a live run has the name)."""
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock($1)", LOCK)
        left = await db.fetchval(
            f"SELECT max(seen + lease - {NOW}) FROM bridge_runs WHERE name = $1 AND run_id IN {LIVE}", name
        )
        if left is not None:
            raise NameTaken(float(left))
        started = await db.fetchval(
            f"INSERT INTO bridge_runs VALUES ($1, $2, {NOW}, {NOW}, $3) RETURNING started", run, name, lease
        )
        return float(started)


class NameTaken(Exception):
    """A live run has the name; its lease runs out in `args[0]` seconds unless it beats again."""


async def beat(db: Connection, run: str, name: str, started: float, lease: float) -> int:
    """Say this run lives (again, if it was reaped while cut off); reap the dead; how many."""
    async with db.transaction():
        await db.execute(
            f"INSERT INTO bridge_runs VALUES ($1, $2, $3, {NOW}, $4) "
            "ON CONFLICT (run_id) DO UPDATE SET seen = EXCLUDED.seen",
            run,
            name,
            started,
            lease,
        )
        dead = await db.fetch(f"DELETE FROM bridge_runs WHERE seen + lease <= {NOW} RETURNING run_id")
        if dead:
            for sql in ORPHANS:
                await db.execute(sql)
            await notify(db, run)
        return len(dead)


async def leave(db: Connection, run: str) -> None:
    """A clean stop: the run and all it holds go at once."""
    async with db.transaction():
        await db.execute("DELETE FROM bridge_runs WHERE run_id = $1", run)
        for sql in ORPHANS:
            await db.execute(sql)
        await notify(db, run)


async def notify(db: Connection, run: str) -> None:
    # The payload names the sender, so that a run can tell its own news from the others'.
    await db.execute("SELECT pg_notify($1, $2)", CHANNEL, run)


async def hold(db: Connection, run: str, key: str) -> bool:
    """Take the conversation if it is free or its holder is dead."""
    row = await db.fetchval(
        f"INSERT INTO conversation_holds AS h VALUES ($1, $2, {NOW}) "
        "ON CONFLICT (key) DO UPDATE SET run_id = EXCLUDED.run_id, since = EXCLUDED.since "
        f"WHERE h.run_id NOT IN {LIVE} RETURNING 1",
        key,
        run,
    )
    return row is not None


async def unhold(db: Connection, run: str, key: str) -> None:
    async with db.transaction():
        await db.execute("DELETE FROM conversation_holds WHERE key = $1 AND run_id = $2", key, run)
        await notify(db, run)


async def claim(
    db: Connection,
    run: str,
    fingerprint: str,
    flight: str,
    *,
    max_in_flight: int,
    daily_cap: int | None,
    day_start: float,
    now: float,
) -> float | None:
    async with db.transaction():
        await db.execute(
            "INSERT INTO token_gates (fingerprint) VALUES ($1) ON CONFLICT DO NOTHING", fingerprint
        )
        # The row lock orders claims of one token across every instance.
        gate = await db.fetchrow(
            "SELECT ready_at, claim_run, claim_flight, day_start, posts_today, "
            f"claim_run IN {LIVE} FROM token_gates WHERE fingerprint = $1 FOR UPDATE",
            fingerprint,
        )
        assert gate is not None  # inserted above, and only a run's close deletes nothing of it
        others = await db.fetchval(
            "SELECT count(*) FROM token_flights WHERE fingerprint = $1 "
            f"AND NOT (run_id = $2 AND flight = $3) AND run_id IN {LIVE}",
            fingerprint,
            run,
            flight,
        )
        verdict = refusal(
            claimed_by_other=bool(gate[5]) and (gate[1], gate[2]) != (run, flight),
            ready_at=float(gate[0]),
            others_in_flight=int(others),
            posts_today=int(gate[4]) if float(gate[3]) >= day_start else 0,
            max_in_flight=max_in_flight,
            daily_cap=daily_cap,
            now=now,
        )
        if verdict is None:
            await db.execute(
                "UPDATE token_gates SET claim_run = $2, claim_flight = $3 WHERE fingerprint = $1",
                fingerprint,
                run,
                flight,
            )
            await db.execute(
                "INSERT INTO token_flights VALUES ($1, $2, $3) "
                "ON CONFLICT (fingerprint, flight) DO UPDATE SET run_id = EXCLUDED.run_id",
                fingerprint,
                flight,
                run,
            )
        return verdict


async def posted(
    db: Connection, run: str, fingerprint: str, flight: str, ready_at: float, counted: bool, day_start: float
) -> None:
    # A post made while the database was away has no row yet: the upsert makes it.
    mine = "g.claim_run = $5 AND g.claim_flight = $6"
    async with db.transaction():
        await db.execute(
            "INSERT INTO token_gates AS g (fingerprint, ready_at, day_start, posts_today) "
            "VALUES ($1, $2, $3, CASE WHEN $4 THEN 1 ELSE 0 END) "
            "ON CONFLICT (fingerprint) DO UPDATE SET ready_at = EXCLUDED.ready_at, "
            "posts_today = CASE WHEN NOT $4 THEN g.posts_today WHEN $3 > g.day_start THEN 1 "
            "ELSE g.posts_today + 1 END, "
            "day_start = CASE WHEN $4 THEN GREATEST(g.day_start, $3) ELSE g.day_start END, "
            f"claim_run = CASE WHEN {mine} THEN NULL ELSE g.claim_run END, "
            f"claim_flight = CASE WHEN {mine} THEN NULL ELSE g.claim_flight END",
            fingerprint,
            ready_at,
            day_start,
            counted,
            run,
            flight,
        )
        await notify(db, run)


async def release(db: Connection, run: str, fingerprint: str, flight: str) -> None:
    async with db.transaction():
        await db.execute(
            "DELETE FROM token_flights WHERE fingerprint = $1 AND flight = $2 AND run_id = $3",
            fingerprint,
            flight,
            run,
        )
        await db.execute(
            "UPDATE token_gates SET claim_run = NULL, claim_flight = NULL "
            "WHERE fingerprint = $1 AND claim_run = $3 AND claim_flight = $2",
            fingerprint,
            flight,
            run,
        )
        await notify(db, run)


async def tokens(db: Connection, run: str) -> dict[str, SharedToken]:
    flights = await db.fetch(
        "SELECT f.fingerprint, r.name, r.run_id = $1, count(*) FROM token_flights f "
        f"JOIN bridge_runs r USING (run_id) WHERE r.seen + r.lease > {NOW} GROUP BY 1, 2, 3",
        run,
    )
    holders: dict[str, dict[str, int]] = collections.defaultdict(dict)
    others: collections.Counter[str] = collections.Counter()
    for fingerprint, name, mine, count in flights:
        holders[fingerprint][name] = int(count)
        others[fingerprint] += 0 if mine else int(count)
    # Only another bridge's claim holds this one back: its own it knows without asking.
    gates = await db.fetch(
        f"SELECT fingerprint, ready_at, COALESCE(claim_run IN {LIVE} AND claim_run <> $1, false), "
        "day_start, posts_today FROM token_gates",
        run,
    )
    return {
        row[0]: SharedToken(
            row[0],
            others_in_flight=others[row[0]],
            ready_at=float(row[1]),
            claimed=bool(row[2]),
            day_start=float(row[3]),
            posts_today=int(row[4]),
            holders=holders[row[0]],
        )
        for row in gates
    }


async def lead(db: Connection, run: str) -> bool:
    row = await db.fetchval(
        "INSERT INTO bridge_leader AS l VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET run_id = EXCLUDED.run_id "
        f"WHERE l.run_id = EXCLUDED.run_id OR l.run_id NOT IN {LIVE} RETURNING 1",
        run,
    )
    return row is not None


async def instances(db: Connection) -> list[InstanceInfo]:
    rows = await db.fetch(
        "SELECT r.name, r.started, r.seen, COALESCE(l.run_id = r.run_id, false) FROM bridge_runs r "
        f"LEFT JOIN bridge_leader l ON l.id = 1 WHERE r.seen + r.lease > {NOW} ORDER BY r.started, r.name"
    )
    return [InstanceInfo(row[0], float(row[1]), float(row[2]), leader=bool(row[3])) for row in rows]
