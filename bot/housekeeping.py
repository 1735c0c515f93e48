"""Archiving threads: the bridge's idle ones, and the ones callers forgot (DELETE
/v1/conversations/{id}); their conversations are forgotten."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from bot.conversations import Conversations
from bot.rest import Credential, DiscordRest, RestError

log = logging.getLogger(__name__)

# Threads are looked at this often, or four times per TTL when that is shorter.
MAX_INTERVAL = 3600.0


async def _archive(rest: DiscordRest, credential: Credential, thread_id: int) -> bool:
    """Archive the thread; False when Discord failed and it may be tried again."""
    try:
        await rest.archive_thread(thread_id, credential)
    except RestError as exc:
        # Gone already (deleted, or no access any more): forgetting it is all that is left.
        if exc.status not in (403, 404):
            log.warning("could not archive thread %s: %s", thread_id, exc)
            return False
    return True


async def archive_idle_threads(
    conversations: Conversations,
    rest: DiscordRest,
    credential: Credential,
    *,
    ttl_seconds: float,
    now: float,
    in_use: Callable[[], set[int]],
) -> list[int]:
    """Archive and forget the threads the bridge created that were idle past the TTL.

    Only threads in the bridge's own table are touched; a thread with a reply in flight waits.
    """
    archived: list[int] = []
    for thread_id in await conversations.idle_threads(now - ttl_seconds):
        if thread_id in in_use():
            continue
        if not await _archive(rest, credential, thread_id):
            continue
        await conversations.forget(thread_id)
        archived.append(thread_id)
    if archived:
        log.info("archived %d idle thread(s)", len(archived))
    return archived


async def archive_dismissed(conversations: Conversations, rest: DiscordRest, credential: Credential) -> None:
    """Archive the threads of conversations their callers forgot (already forgotten here), each
    once the request in flight in it, if any, has ended."""
    for thread_id in conversations.take_dismissed():
        try:
            async with conversations.quiet(thread_id):
                # Not tried again on failure: Discord archives it itself after an idle hour.
                await _archive(rest, credential, thread_id)
        finally:
            conversations.archived(thread_id)


async def _alone() -> bool:
    return True


async def housekeeping_loop(
    conversations: Conversations,
    rest: DiscordRest,
    credential: Credential,
    *,
    ttl_seconds: float,
    in_use: Callable[[], set[int]],
    lead: Callable[[], Awaitable[bool]] = _alone,
) -> None:
    """Archive forgotten conversations' threads (each bridge those its callers forgot), and
    idle threads (only the bridge that leads those sharing a database: one archives each)."""
    interval = min(MAX_INTERVAL, ttl_seconds / 4)
    while True:
        try:
            await archive_dismissed(conversations, rest, credential)
            if await lead():
                await archive_idle_threads(
                    conversations, rest, credential, ttl_seconds=ttl_seconds, now=time.time(), in_use=in_use
                )
        except Exception:
            log.exception("housekeeping failed; trying again in %.0fs", interval)
        # The interval, or sooner when a caller forgets a conversation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await conversations.wait_dismissed()
