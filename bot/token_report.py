"""What /v1/status and /admin/tokens show of the pool: each token's state, since when and why,
and how many tokens each model has left (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bot.config import ModelSettings
from bot.status import ModelStatus, TokenReport, TokenState
from bot.token_pool import ADMIN_DISABLED, SETTINGS_DISABLED, PoolToken, TokenPool, utc


@dataclass(frozen=True, slots=True)
class Standing:
    state: TokenState
    since: float | None
    reason: str | None
    until: float | None  # resting or capped: when it can post again


def standing(pool: TokenPool, token: PoolToken, coze_bot_ids: Iterable[int], now: float) -> Standing:
    """Invalid, disabled, retiring, capped, resting (for every Coze bot served), or healthy."""
    if token.invalid:
        return Standing(
            TokenState.INVALID, token.invalid_since, token.invalid_reason or "Discord refused it", None
        )
    if token.disabled:
        return Standing(TokenState.DISABLED, token.disabled_since, ADMIN_DISABLED, None)
    if not token.enabled:
        return Standing(TokenState.DISABLED, token.back_at, SETTINGS_DISABLED, None)
    if token.retiring_since is not None:
        reason = "no longer in the settings: finishing its prompts in flight"
        return Standing(TokenState.RETIRING, token.retiring_since, reason, None)
    if (capped := pool.capped_until(token, now)) is not None:
        reason = f"made its daily_cap of {token.pacing.daily_cap} posts today"
        return Standing(TokenState.CAPPED, token.capped_at, reason, capped)
    bots = list(coze_bot_ids)
    rests = [until for bot in bots if (until := token.resting_until(bot, now)) is not None]
    if bots and len(rests) == len(bots):
        since = max((token.rested_at.get(bot, 0.0) for bot in bots), default=0.0) or None
        return Standing(TokenState.RESTING, since, "Coze's daily limit for every model it serves", min(rests))
    # Healthy since it came back (a check, an admin, a reload, a rest that ended); None: since start.
    ends = [t for t in (token.back_at, *token.rests.values()) if t is not None and t <= now]
    return Standing(TokenState.HEALTHY, max(ends) if ends else None, None, None)


def token_report(
    pool: TokenPool, token: PoolToken, models: Sequence[ModelSettings], now: float
) -> TokenReport:
    where = standing(pool, token, [model.coze_bot_id for model in models], now)
    resting = {
        model.name: utc(until)
        for model in models
        if (until := token.resting_until(model.coze_bot_id, now)) is not None
    }
    return TokenReport(
        id=token.fingerprint,
        label=token.label,
        state=where.state,
        since=utc(where.since) if where.since else None,
        reason=where.reason,
        resting_until=utc(where.until) if where.until else None,
        resting_models=resting,
        in_flight=token.in_flight + token.others_in_flight,
        max_in_flight=token.pacing.max_in_flight,
        posts_today=pool.posts_today(token, now),
        daily_cap=token.pacing.daily_cap,
        here=pool.here,
        holders={**token.holders, pool.here: token.in_flight} if token.in_flight else dict(token.holders),
    )


def pool_report(
    pool: TokenPool, models: Sequence[ModelSettings], now: float
) -> tuple[tuple[TokenReport, ...], tuple[ModelStatus, ...]]:
    """Every token (masked), and each model's rest and tokens left."""
    tokens = tuple(token_report(pool, token, models, now) for token in pool.tokens)
    statuses = tuple(
        ModelStatus(
            model.name,
            utc(until) if (until := pool.model_resting_until(model.coze_bot_id, now)) else None,
            tokens_available=sum(pool.usable(token, model.coze_bot_id, now) for token in pool.tokens),
        )
        for model in models
    )
    return tokens, statuses
