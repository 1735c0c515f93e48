"""Keeping this bridge's view of the pool in step with the bridges sharing its database.

Each round reads what the coordinator knows of every token (others' posts in flight, gaps,
claims, counts) and what the store holds of their states (invalid marks, admins' switches,
rests), and hands both to the ledger, which serves the queue again. A round runs when another
bridge announces a change, and at least every ROUND_SECONDS; never more often than
MIN_ROUND_SECONDS, so a busy pool costs a few queries a second, not one per post.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from bot.coordination import Coordinator, InstanceInfo
from bot.ledger import Ledger
from bot.seams import Clock
from bot.status import InstanceReport
from bot.store import Store

log = logging.getLogger(__name__)

ROUND_SECONDS = 1.0
MIN_ROUND_SECONDS = 0.1


def instance_reports(instances: list[InstanceInfo]) -> tuple[InstanceReport, ...]:
    return tuple(
        InstanceReport(
            name=info.name,
            started=datetime.fromtimestamp(info.started, UTC),
            seen=datetime.fromtimestamp(info.seen, UTC),
            leader=info.leader,
        )
        for info in instances
    )


async def share_rounds(
    coordinator: Coordinator,
    ledger: Ledger,
    store: Store,
    clock: Clock,
    on_instances: Callable[[tuple[InstanceReport, ...]], None],
) -> None:
    """Run rounds until cancelled; a failed round (the database away) is tried again next round."""
    failing = False
    while True:
        try:
            seen = await coordinator.shared_tokens()
            rows, rests, model_rests = (
                await store.tokens(),
                await store.token_rests(),
                await store.model_rests(),
            )
            instances = await coordinator.instances()
        except Exception as exc:
            if not failing:
                log.warning(
                    "could not read the shared pool (%s); trying again every round", type(exc).__name__
                )
            failing = True
        else:
            failing = False
            now = clock()
            ledger.pool.share(seen, now)
            ledger.refresh(rows, rests, model_rests, now)
            on_instances(instance_reports(instances))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ROUND_SECONDS):
                await coordinator.changed()
        await asyncio.sleep(MIN_ROUND_SECONDS)
