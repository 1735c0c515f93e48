"""Starting the Discord side: store, token pool, REST, the gateway bot and housekeeping."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import discord
import yarl

from bot.accounts import Account, AccountPool, fingerprint
from bot.backend import DiscordBackend, StartupError
from bot.config import BackendConfig
from bot.conversations import Conversations
from bot.housekeeping import housekeeping_loop
from bot.interface import BridgeState
from bot.listener import Listener
from bot.rest import Credential, DiscordRest, RestError
from bot.router import ReplyRouter
from bot.storage import open_store
from bot.tasks import TaskSet

log = logging.getLogger(__name__)


def _point_discordpy_at(api_base: str, gateway_url: str) -> None:
    # discord.py reads both from class attributes, so they apply process-wide; a plain Client
    # never asks /gateway/bot itself and falls back to DEFAULT_GATEWAY after a refused RESUME.
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


def _accounts(config: BackendConfig, bot: Credential) -> tuple[list[Account], dict[str, Credential]]:
    credentials: dict[str, Credential] = {}
    accounts: list[Account] = []
    for index, secret in enumerate(config.discord.user_tokens, start=1):
        token = secret.get_secret_value()
        key = fingerprint(token)
        if key in credentials:
            continue  # the same token listed twice is one account
        credentials[key] = Credential(token, is_bot=False, label=f"user token #{index}")
        accounts.append(Account(label=f"user token #{index}", fingerprint=key))
    if not accounts:
        log.warning(
            "no discord.user_tokens: the listener bot posts the prompts itself, and a real Coze bot "
            "does not answer prompts written by bot accounts"
        )
        key = fingerprint(config.discord.bot_token.get_secret_value())
        credentials[key] = bot
        accounts.append(Account(label="listener bot", fingerprint=key))
    return accounts, credentials


@asynccontextmanager
async def open_backend(config: BackendConfig) -> AsyncIterator[DiscordBackend]:
    """Log in to Discord, start the gateway, yield the backend; close everything on exit."""
    settings = config.discord
    bot = Credential(settings.bot_token.get_secret_value(), is_bot=True, label="listener bot")
    accounts, credentials = _accounts(config, bot)
    pool = AccountPool(accounts, config.accounts.reset_at)
    tasks = TaskSet()
    router = ReplyRouter()
    models = config.model_routes
    client = Listener(
        guild_id=settings.guild_id,
        coze_bot_ids=frozenset(model.coze_bot_id for model in models),
        sink=router.deliver,
    )
    async with (
        open_store(config.storage.path) as store,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
    ):
        pool.restore(await store.tokens(), await store.token_rests(), await store.model_rests())
        rest = DiscordRest(settings.api_base, session)
        backend = DiscordBackend(
            config=config,
            client=client,
            rest=rest,
            router=router,
            pool=pool,
            credentials=credentials,
            conversations=Conversations(store),
            store=store,
            reader=bot,
            tasks=tasks,
        )
        client.on_resync = backend.resync
        try:
            try:
                _point_discordpy_at(settings.api_base, await rest.gateway_url(bot))
                await client.login(settings.bot_token.get_secret_value())
            except (RestError, discord.LoginFailure) as exc:
                raise StartupError(f"cannot log in to Discord at {settings.api_base}: {exc}") from None
            client.set_state(BridgeState.CONNECTING)
            tasks.spawn(_run_gateway(client), name="discord-gateway")
            tasks.spawn(
                housekeeping_loop(
                    store,
                    rest,
                    bot,
                    ttl_seconds=config.storage.thread_ttl_hours * 3600,
                    in_use=backend.busy_threads,
                ),
                name="housekeeping",
            )
            yield backend
        finally:
            client.set_state(BridgeState.STOPPING)
            await client.close()
            await tasks.close()


async def _run_gateway(client: Listener) -> None:
    try:
        await client.connect(reconnect=True)
    except discord.PrivilegedIntentsRequired:
        client.set_state(BridgeState.DEGRADED)
        log.error("enable the Message Content intent for the listening bot in the Discord developer portal")
    except (discord.GatewayNotFound, discord.ConnectionClosed) as exc:
        client.set_state(BridgeState.DEGRADED)
        log.error("the Discord gateway connection ended: %s", exc)
