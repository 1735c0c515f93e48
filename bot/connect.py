"""Starting the Discord side: store, token pool, REST, the gateway and housekeeping, wired up."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from bot.backend import DiscordBackend
from bot.config import BackendConfig
from bot.conversations import Conversations
from bot.gateway import Gateway
from bot.gateway_state import GatewayState
from bot.housekeeping import housekeeping_loop
from bot.interface import ImageKeeper
from bot.ledger import Ledger
from bot.posting import Posting
from bot.proxy import configured, connector
from bot.rest import Credential, DiscordRest
from bot.router import ReplyRouter
from bot.stores import open_coordinator, open_store
from bot.tasks import TaskSet
from bot.token_pool import TokenPool, TokenSpec
from bot.token_roster import roster

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_backend(
    config: BackendConfig, *, images: ImageKeeper | None = None
) -> AsyncIterator[DiscordBackend]:
    """Log in to Discord, start the gateway, yield the backend; close everything on exit."""
    settings = config.discord
    bot_token = settings.bot_token.get_secret_value()
    bot = Credential(bot_token, is_bot=True, label="listener bot")

    def tokens_of(config: BackendConfig) -> tuple[list[TokenSpec], dict[str, Credential]]:
        return roster(config, bot)

    specs, credentials = tokens_of(config)
    if not config.discord.user_tokens:
        log.warning(
            "no discord.user_tokens: the listener bot posts the prompts itself, and a real Coze bot "
            "does not answer prompts written by bot accounts"
        )
    pool = TokenPool([], config.accounts.reset_at)
    tasks, writes = TaskSet(), TaskSet()
    router = ReplyRouter()
    models = config.model_routes
    proxy = await configured(settings.proxy)
    if proxy is not None:
        log.info("Discord through the proxy %s", proxy.shown)
    gateway = Gateway(
        guild_id=settings.guild_id,
        coze_bot_ids=frozenset(model.coze_bot_id for model in models),
        router=router,
        state=GatewayState(),
        # discord.py opens the gateway websocket on its REST session: the connector covers both.
        connector=None if proxy is None else connector(proxy, limit=0),
        gateway_url=settings.gateway_url,
    )
    async with (
        open_store(config.storage) as store,
        open_coordinator(config.storage, config.instance, time.time()) as coordinator,
        aiohttp.ClientSession(connector=connector(proxy), timeout=aiohttp.ClientTimeout(total=30)) as session,
    ):
        pool.restore(await store.tokens(), await store.token_rests(), await store.model_rests())
        pool.apply(specs, time.time())
        pool.here = config.instance.name
        rest = DiscordRest(settings.api_base, session)
        conversations = Conversations(store, writes, coordinator)
        backend = DiscordBackend(
            models=models,
            completion=config.completion,
            accounts=config.accounts,
            gateway=gateway.state,
            router=router,
            posting=Posting(
                poster=rest,
                channels=gateway.listener,
                router=router,
                reader=bot,
                credentials=credentials,
                max_concurrent=settings.max_concurrent_posts,
                thread_names=settings.thread_names,
                private_threads=settings.private_threads,
            ),
            history=rest,
            reader=bot,
            ledger=Ledger(
                pool,
                store,
                writes,
                clock=time.time,
                max_queue=config.accounts.max_queue,
                coordinator=coordinator,
            ),
            conversations=conversations,
            clock=time.time,
            tasks=tasks,
            credentials=credentials,
            checker=rest,
            roster=tokens_of,
            on_models=gateway.set_coze_bot_ids,
            images=images,
        )
        gateway.on_resync = backend.resync
        try:
            await gateway.login(rest, bot, bot_token)
            tasks.spawn(gateway.run(), name="discord-gateway")
            backend.start_checks()
            backend.start_sharing(store)
            tasks.spawn(
                housekeeping_loop(
                    conversations,
                    rest,
                    bot,
                    ttl_seconds=config.storage.thread_ttl_hours * 3600,
                    in_use=backend.busy_threads,
                    lead=coordinator.lead,
                ),
                name="housekeeping",
            )
            yield backend
        finally:
            await gateway.close()
            await tasks.close()
            # Store writes are never cut short: they finish before the store closes.
            await writes.wait()
            await rest.aclose()
