"""The user-token pool: who posts the next prompt, and who rests until Coze's quota resets (pure).

Coze's quotas are per Discord user per Coze bot per day, so a daily-limit notice rests one
token for one Coze bot; the creator-credits notice rests the Coze bot itself. Times are epoch
seconds passed in by the caller; nothing here reads a clock or does I/O.

A user token has four faces, each named for its job: `bot.rest.Credential` is the secret as
REST sends it; `PoolToken` is its place in this pool (turns, rests, counts);
`bot.store.StoredToken` is what survives a restart; `bot.interface.TokenReport` is what
/v1/status shows. Only the first holds the secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bot.config import ModelSettings
from bot.interface import ModelStatus, TokenReport, TokenState
from bot.reset import ResetTime
from bot.store import StoredToken


def fingerprint(token: str) -> str:
    """A stable id for a token that reveals nothing about it (stored and shown instead)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@dataclass(eq=False)
class PoolToken:
    label: str  # "user token #2": safe for logs
    fingerprint: str
    invalid: bool = False
    rests: dict[int, float] = field(default_factory=dict)  # coze bot id -> resting until
    day_start: float = 0.0
    requests_today: int = 0

    @property
    def masked(self) -> str:
        return f"{self.label} ({self.fingerprint[:8]})"

    def resting_until(self, coze_bot_id: int, now: float) -> float | None:
        until = self.rests.get(coze_bot_id)
        return until if until is not None and until > now else None

    def stored(self) -> StoredToken:
        return StoredToken(self.fingerprint, self.invalid, self.day_start, self.requests_today)


class TokenPool:
    def __init__(self, tokens: Sequence[PoolToken], reset: ResetTime) -> None:
        self.tokens = list(tokens)
        self.reset = reset
        self.model_rests: dict[int, float] = {}
        self._next = 0

    def restore(
        self, rows: dict[str, StoredToken], rests: dict[tuple[str, int], float], model_rests: dict[int, float]
    ) -> None:
        """Take over what the store remembered from an earlier run."""
        for token in self.tokens:
            if (row := rows.get(token.fingerprint)) is not None:
                token.invalid = row.invalid
                token.day_start, token.requests_today = row.day_start, row.requests_today
            token.rests = {bot: until for (fp, bot), until in rests.items() if fp == token.fingerprint}
        self.model_rests = dict(model_rests)

    def pick(
        self, coze_bot_id: int, now: float, *, exclude: Iterable[PoolToken] = (), advance: bool = True
    ) -> PoolToken | None:
        """The next healthy token for this Coze bot, round-robin; None when all rest or are invalid.

        `advance=False` only asks whether there is one, without taking a turn.
        """
        skipped = set(map(id, exclude))
        count = len(self.tokens)
        for offset in range(count):
            token = self.tokens[(self._next + offset) % count]
            if token.invalid or id(token) in skipped or token.resting_until(coze_bot_id, now):
                continue
            if advance:
                self._next = (self._next + offset + 1) % count
            return token
        return None

    def next_reset(self, now: float) -> float:
        return self.reset.next_after(utc(now)).timestamp()

    def rest(self, token: PoolToken, coze_bot_id: int, now: float) -> float:
        until = self.next_reset(now)
        token.rests[coze_bot_id] = until
        return until

    def rest_model(self, coze_bot_id: int, now: float) -> float:
        until = self.next_reset(now)
        self.model_rests[coze_bot_id] = until
        return until

    def model_resting_until(self, coze_bot_id: int, now: float) -> float | None:
        until = self.model_rests.get(coze_bot_id)
        return until if until is not None and until > now else None

    def earliest_return(self, coze_bot_id: int, now: float) -> float | None:
        """When the first resting token can post to this Coze bot again (None: none will)."""
        times = [
            until
            for a in self.tokens
            if not a.invalid and (until := a.resting_until(coze_bot_id, now)) is not None
        ]
        return min(times) if times else None

    def count_request(self, token: PoolToken, now: float) -> None:
        today = self.reset.last_at_or_before(utc(now)).timestamp()
        if token.day_start != today:
            token.day_start, token.requests_today = today, 0
        token.requests_today += 1

    def requests_today(self, token: PoolToken, now: float) -> int:
        today = self.reset.last_at_or_before(utc(now)).timestamp()
        return token.requests_today if token.day_start == today else 0

    def state(self, token: PoolToken, coze_bot_ids: Iterable[int], now: float) -> TokenState:
        """Invalid; resting (for every Coze bot served); otherwise healthy."""
        if token.invalid:
            return TokenState.INVALID
        bots = list(coze_bot_ids)
        if bots and all(token.resting_until(bot, now) for bot in bots):
            return TokenState.RESTING
        return TokenState.HEALTHY

    def report(
        self, models: Sequence[ModelSettings], now: float
    ) -> tuple[tuple[TokenReport, ...], tuple[ModelStatus, ...]]:
        """What GET /v1/status shows: each token (masked) and each model's rest."""
        bots = [model.coze_bot_id for model in models]
        tokens = []
        for token in self.tokens:
            resting = {
                model.name: utc(until)
                for model in models
                if (until := token.resting_until(model.coze_bot_id, now)) is not None
            }
            state = self.state(token, bots, now)
            tokens.append(
                TokenReport(
                    id=token.fingerprint,
                    label=token.label,
                    state=state,
                    since=None,
                    reason=None,
                    resting_until=min(resting.values()) if state is TokenState.RESTING else None,
                    resting_models=resting,
                    in_flight=0,
                    max_in_flight=1,
                    posts_today=self.requests_today(token, now),
                    daily_cap=None,
                )
            )
        rests = tuple(
            ModelStatus(
                model.name,
                utc(until) if (until := self.model_resting_until(model.coze_bot_id, now)) else None,
            )
            for model in models
        )
        return tuple(tokens), rests


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)
