"""The user tokens the settings list, as the pool and REST take them (start-up and reloads).

Each token's label is its `label` or "user token #N"; what it leaves unset follows
`accounts.*`. The same token listed twice is one token. With no user tokens at all, the
listener bot posts the prompts itself (a real Coze bot ignores them: said once at start-up).
"""

from __future__ import annotations

from bot.config import AccountSettings, BackendConfig, UserTokenSettings
from bot.identity import user_credential
from bot.rest import Credential
from bot.token_pool import Pacing, TokenSpec, fingerprint

LISTENER_LABEL = "listener bot"


def pacing(entry: UserTokenSettings, accounts: AccountSettings) -> Pacing:
    return Pacing(
        max_in_flight=entry.max_in_flight or accounts.max_in_flight,
        min_gap=accounts.min_gap_seconds if entry.min_gap_seconds is None else entry.min_gap_seconds,
        jitter=accounts.jitter_seconds,
        daily_cap=entry.daily_cap or accounts.daily_cap,
    )


def roster(config: BackendConfig, listener: Credential) -> tuple[list[TokenSpec], dict[str, Credential]]:
    """Every listed token's place in the pool, and its credential (by fingerprint).

    Raises StartupError (nothing secret in it) for a token whose own proxy is not a proxy URL.
    """
    credentials: dict[str, Credential] = {}
    specs: list[TokenSpec] = []
    for index, entry in enumerate(config.discord.user_tokens, start=1):
        key = fingerprint(entry.token.get_secret_value())
        if key in credentials:
            continue
        label = entry.label or f"user token #{index}"
        credentials[key] = user_credential(entry, config.accounts, label)
        specs.append(TokenSpec(label, key, pacing(entry, config.accounts), entry.enabled))
    if not specs:
        key = fingerprint(config.discord.bot_token.get_secret_value())
        credentials[key] = listener
        specs.append(TokenSpec(LISTENER_LABEL, key))
    return specs, credentials
