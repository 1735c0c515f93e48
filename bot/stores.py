"""Opening the store `storage.url` names: SQLite's file, or a PostgreSQL database.

The PostgreSQL modules are imported only for a postgresql:// URL: asyncpg alone adds about
4 MB to every process, and most bridges run alone on SQLite.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.config import InstanceSettings, StorageSettings, masked_url
from bot.coordination import Coordinator, LocalCoordinator
from bot.sqlite_store import open_sqlite_store
from bot.store import Store

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_store(settings: StorageSettings) -> AsyncIterator[Store]:
    """The store, migrated and ready; every write started is durable when this exits.

    Raises StartupError (one line, no password) for a store that cannot be opened.
    """
    url = settings.postgresql
    if url is not None:
        from bot.postgres_store import open_postgres_store  # only for PostgreSQL: see above

        async with open_postgres_store(url) as postgres:
            log.info("storage: PostgreSQL at %s", masked_url(url))
            yield postgres
        return
    assert settings.path is not None  # StorageSettings names one or the other
    async with open_sqlite_store(settings.path) as sqlite:
        log.info("storage: SQLite at %s", settings.path)
        yield sqlite


@asynccontextmanager
async def open_coordinator(
    settings: StorageSettings, instance: InstanceSettings, now: float
) -> AsyncIterator[Coordinator]:
    """What this bridge agrees on with others sharing its database: on SQLite, nobody."""
    url = settings.postgresql
    if url is None:
        local = LocalCoordinator(instance.name)
        local.started(now)
        yield local
        return

    from bot.postgres_coordinator import open_postgres_coordinator  # only for PostgreSQL: see above

    async with open_postgres_coordinator(
        url, name=instance.name, lease_seconds=instance.lease_seconds
    ) as shared:
        log.info("instance %s: sharing the pool and conversations through PostgreSQL", instance.name)
        yield shared
