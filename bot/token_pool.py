"""The user-token pool: who may post the next prompt, and when (pure).

Coze's quotas are per Discord user per Coze bot per day, so a daily-limit notice rests one
token for one Coze bot; the creator-credits notice rests the Coze bot itself. Each token is also
paced as a person would post: a gap (plus jitter) between two of its posts, a bound on its
prompts awaiting Coze, and an optional daily cap. Times are epoch seconds passed in by the
caller and randomness comes from an injected `random.Random`: nothing here reads a clock or
does I/O.

A user token has four faces, each named for its job: `bot.rest.Credential` is the secret as
REST sends it; `PoolToken` is its place in this pool (pacing, rests, counts);
`bot.store.StoredToken` is what survives a restart; `bot.interface.TokenReport` is what
/v1/status shows. Only the first holds the secret.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bot.coordination import SharedToken
from bot.reset import ResetTime
from bot.store import StoredToken

ADMIN_DISABLED = "disabled by an admin"
# A max_in_flight this high bounds nothing (the listener-bot fallback, benchmarks).
UNBOUNDED = 1_000_000
SETTINGS_DISABLED = "enabled = false in the settings"


def fingerprint(token: str) -> str:
    """A stable id for a token that reveals nothing about it (stored and shown instead)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Pacing:
    """How one token posts. The default paces nothing (the listener-bot fallback, unit rigs)."""

    max_in_flight: int = UNBOUNDED
    min_gap: float = 0.0
    jitter: float = 0.0
    daily_cap: int | None = None

    @property
    def paced(self) -> bool:
        """Whether posts keep a gap, so one post at a time may be about to go out."""
        return self.min_gap > 0 or self.jitter > 0

    @property
    def bounded(self) -> bool:
        """Whether anything limits its posts: then bridges sharing it claim each post first."""
        return self.paced or self.max_in_flight < UNBOUNDED or self.daily_cap is not None


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """A token as the settings list it."""

    label: str
    fingerprint: str
    pacing: Pacing = Pacing()
    enabled: bool = True


@dataclass(eq=False)
class PoolToken:
    label: str  # "user token #2", or the settings' label: safe for logs
    fingerprint: str
    pacing: Pacing = Pacing()
    enabled: bool = True  # the settings' `enabled`
    invalid: bool = False
    invalid_reason: str | None = None
    invalid_since: float | None = None
    disabled: bool = False  # by an admin (persisted)
    disabled_since: float | None = None
    retiring_since: float | None = None  # gone from the settings, finishing its prompts
    rests: dict[int, float] = field(default_factory=dict)  # coze bot id -> resting until
    rested_at: dict[int, float] = field(default_factory=dict)  # since when (this run only)
    day_start: float = 0.0
    requests_today: int = 0
    capped_at: float | None = None  # the post that reached the cap (this run only)
    back_at: float | None = None  # when it last became healthy again (this run only)
    in_flight: int = 0  # requests holding it, from their take until their reply ends
    claimed: bool = False  # a holder is about to post with it: nobody else may (when paced)
    ready_at: float = 0.0  # its next post may not go out before this (the gap)
    # What other bridges sharing the database do with it (bot.coordination), as last seen.
    others_in_flight: int = 0
    others_ready_at: float = 0.0
    others_claimed: bool = False
    holders: dict[str, int] = field(default_factory=dict)  # instance name -> posts in flight

    @property
    def masked(self) -> str:
        return f"{self.label} ({self.fingerprint[:8]})"

    def resting_until(self, coze_bot_id: int, now: float) -> float | None:
        until = self.rests.get(coze_bot_id)
        return until if until is not None and until > now else None

    def stored(self) -> StoredToken:
        return StoredToken(
            self.fingerprint,
            self.invalid,
            self.day_start,
            self.requests_today,
            invalid_reason=self.invalid_reason,
            invalid_since=self.invalid_since,
            disabled=self.disabled,
            disabled_since=self.disabled_since,
        )

    def take_over(self, row: StoredToken) -> None:
        self.invalid, self.invalid_reason, self.invalid_since = (
            row.invalid,
            row.invalid_reason,
            row.invalid_since,
        )
        self.disabled, self.disabled_since = row.disabled, row.disabled_since
        self.day_start, self.requests_today = row.day_start, row.requests_today


class TokenPool:
    def __init__(
        self, tokens: Sequence[PoolToken], reset: ResetTime, *, rng: random.Random | None = None
    ) -> None:
        self.tokens = list(tokens)
        self.reset = reset
        self.rng = rng or random.Random()
        self.model_rests: dict[int, float] = {}
        # This bridge's instance.name, under which reports show its own posts in flight.
        self.here = ""
        # What the store remembered, for tokens a reload adds later; and tokens that left the
        # pool, so one listed again keeps its counts and its state.
        self._stored: dict[str, StoredToken] = {}
        self._stored_rests: dict[tuple[str, int], float] = {}
        self._departed: dict[str, PoolToken] = {}

    def restore(
        self, rows: dict[str, StoredToken], rests: dict[tuple[str, int], float], model_rests: dict[int, float]
    ) -> None:
        """Take over what the store remembered from an earlier run."""
        self._stored, self._stored_rests = dict(rows), dict(rests)
        for token in self.tokens:
            self._restore_one(token)
        self.model_rests = dict(model_rests)

    def _restore_one(self, token: PoolToken) -> None:
        if (row := self._stored.get(token.fingerprint)) is not None:
            token.take_over(row)
        token.rests = {
            bot: until for (fp, bot), until in self._stored_rests.items() if fp == token.fingerprint
        }

    def find(self, token_id: str) -> PoolToken | None:
        return next((token for token in self.tokens if token.fingerprint == token_id), None)

    def apply(self, specs: Sequence[TokenSpec], now: float) -> list[PoolToken]:
        """Take a new token list (a reload); returns the tokens that left the pool at once.

        A token listed again keeps its counts and state; one no longer listed retires: it
        finishes its prompts in flight and leaves when it has none.
        """
        current = {token.fingerprint: token for token in self.tokens}
        kept: list[PoolToken] = []
        for spec in specs:
            token = current.pop(spec.fingerprint, None) or self._departed.pop(spec.fingerprint, None)
            if token is None:
                token = PoolToken(spec.label, spec.fingerprint)
                self._restore_one(token)
            if token.retiring_since is not None:
                token.retiring_since, token.back_at = None, now
            if token.enabled != spec.enabled:
                token.back_at = now
            token.label, token.pacing, token.enabled = spec.label, spec.pacing, spec.enabled
            kept.append(token)
        gone: list[PoolToken] = []
        for token in current.values():
            if token.in_flight:
                token.retiring_since = token.retiring_since or now
                kept.append(token)
            else:
                self._departed[token.fingerprint] = token
                gone.append(token)
        self.tokens = kept
        return gone

    # Availability and choice.
    def capped_until(self, token: PoolToken, now: float) -> float | None:
        cap = token.pacing.daily_cap
        if cap is not None and self.posts_today(token, now) >= cap:
            return self.next_reset(now)
        return None

    def usable(self, token: PoolToken, coze_bot_id: int, now: float) -> bool:
        """Healthy for this Coze bot: it can post to it now, or once it is free."""
        return not (
            token.invalid
            or token.disabled
            or not token.enabled
            or token.retiring_since is not None
            or self.capped_until(token, now) is not None
            or token.resting_until(coze_bot_id, now) is not None
        )

    def any_usable(self, coze_bot_id: int, now: float, exclude: Iterable[str] = ()) -> bool:
        skipped = set(exclude)
        return any(
            self.usable(token, coze_bot_id, now) for token in self.tokens if token.fingerprint not in skipped
        )

    @staticmethod
    def is_free(token: PoolToken, now: float) -> bool:
        """Below its max_in_flight, nobody about to post with it, and past its gap."""
        return _flying(token) < token.pacing.max_in_flight and TokenPool.may_post(token, now)

    def choose(self, coze_bot_id: int, now: float, *, exclude: Iterable[str] = ()) -> PoolToken | None:
        """The free token with the fewest prompts in flight, then the fewest posts today (a
        random one among ties); None when no token is free for this Coze bot now."""
        skipped = set(exclude)
        best: list[PoolToken] = []
        best_key: tuple[int, int] | None = None
        for token in self.tokens:
            if token.fingerprint in skipped or not self.is_free(token, now):
                continue
            if not self.usable(token, coze_bot_id, now):
                continue
            key = (_flying(token), self.posts_today(token, now))
            if best_key is None or key < best_key:
                best, best_key = [token], key
            elif key == best_key:
                best.append(token)
        return self.rng.choice(best) if best else None

    def next_free_at(self, now: float) -> float | None:
        """When the first token waiting only for its gap may post (None: none is)."""
        times = [
            _ready_at(token)
            for token in self.tokens
            if _ready_at(token) > now and _flying(token) < token.pacing.max_in_flight and not _held(token)
        ]
        return min(times) if times else None

    # Holding and posting.
    @staticmethod
    def take(token: PoolToken) -> None:
        """A request holds the token, and claims its next post."""
        token.in_flight += 1
        token.claimed = True

    def release(self, token: PoolToken, *, claimed: bool) -> bool:
        """The request's reply ended; True when a retiring token thereby left the pool."""
        token.in_flight -= 1
        if claimed:
            token.claimed = False
        if token.retiring_since is not None and token.in_flight == 0 and token in self.tokens:
            self.tokens.remove(token)
            self._departed[token.fingerprint] = token
            return True
        return False

    @staticmethod
    def may_post(token: PoolToken, now: float) -> bool:
        return not _held(token) and now >= _ready_at(token)

    @staticmethod
    def may_post_here(token: PoolToken, now: float) -> bool:
        """As far as this bridge knows without asking the others (its own claims and gaps)."""
        return not (token.claimed and token.pacing.paced) and now >= token.ready_at

    def posted(self, token: PoolToken, now: float, *, counted: bool) -> None:
        """A post with the token ended (its parts all sent, or failed): the gap starts now."""
        # Its own claim was what the other bridges showed: the next look shows any newer one.
        token.claimed = token.others_claimed = False
        pacing = token.pacing
        token.ready_at = now + pacing.min_gap + (self.rng.uniform(0, pacing.jitter) if pacing.jitter else 0.0)
        if counted:
            self.count_request(token, now)
            if self.capped_until(token, now) is not None and token.capped_at is None:
                token.capped_at = now

    # Days, rests and counts.
    def next_reset(self, now: float) -> float:
        return self.reset.next_after(utc(now)).timestamp()

    def rest(self, token: PoolToken, coze_bot_id: int, now: float) -> float:
        until = self.next_reset(now)
        token.rests[coze_bot_id] = until
        token.rested_at[coze_bot_id] = now
        return until

    def rest_model(self, coze_bot_id: int, now: float) -> float:
        until = self.next_reset(now)
        self.model_rests[coze_bot_id] = until
        return until

    def model_resting_until(self, coze_bot_id: int, now: float) -> float | None:
        until = self.model_rests.get(coze_bot_id)
        return until if until is not None and until > now else None

    def returns_at(self, token: PoolToken, coze_bot_id: int, now: float) -> float | None:
        """When a resting or capped token can post to this Coze bot again (None: never by itself)."""
        if token.invalid or token.disabled or not token.enabled or token.retiring_since is not None:
            return None
        times = [t for t in (token.resting_until(coze_bot_id, now), self.capped_until(token, now)) if t]
        return max(times) if times else None

    def earliest_return(self, coze_bot_id: int, now: float, exclude: Iterable[str] = ()) -> float | None:
        """When the first resting or capped token can post to this Coze bot again."""
        skipped = set(exclude)
        times = [
            until
            for token in self.tokens
            if token.fingerprint not in skipped and (until := self.returns_at(token, coze_bot_id, now))
        ]
        return min(times) if times else None

    def today(self, now: float) -> float:
        """When the day of `now` began (the last reset)."""
        return self.reset.last_at_or_before(utc(now)).timestamp()

    def share(self, seen: Mapping[str, SharedToken], now: float) -> None:
        """Take what the bridges sharing the database do with each token (bot.coordination)."""
        today = self.today(now)
        for token in self.tokens:
            shared = seen.get(token.fingerprint, SharedToken(token.fingerprint))
            token.others_in_flight = shared.others_in_flight
            token.others_ready_at, token.others_claimed = shared.ready_at, shared.claimed
            token.holders = {
                name: count for name, count in shared.holders.items() if name != self.here and count
            }
            # Every bridge's posts count against the daily cap; this one's may not be written yet.
            if shared.day_start == today and shared.posts_today > self.posts_today(token, now):
                token.day_start, token.requests_today = today, shared.posts_today

    def count_request(self, token: PoolToken, now: float) -> None:
        today = self.today(now)
        if token.day_start != today:
            token.day_start, token.requests_today, token.capped_at = today, 0, None
        token.requests_today += 1

    def posts_today(self, token: PoolToken, now: float) -> int:
        today = self.today(now)
        return token.requests_today if token.day_start == today else 0

    requests_today = posts_today


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _held(token: PoolToken) -> bool:
    # Unpaced posts need no turns: serialising them would cap a token at one post per round trip.
    return (token.claimed or token.others_claimed) and token.pacing.paced


def _flying(token: PoolToken) -> int:
    return token.in_flight + token.others_in_flight


def _ready_at(token: PoolToken) -> float:
    return max(token.ready_at, token.others_ready_at)
