"""The token pool's rules, with an injected clock (epoch seconds) and randomness."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from bot.config import ModelSettings
from bot.reset import ResetTime
from bot.status import TokenState
from bot.store import StoredToken
from bot.token_pool import (
    ADMIN_DISABLED,
    SETTINGS_DISABLED,
    Pacing,
    PoolToken,
    TokenPool,
    TokenSpec,
    fingerprint,
)
from bot.token_report import pool_report, standing

NOON = datetime(2026, 5, 4, 12, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 5, 5, 0, 0, tzinfo=UTC).timestamp()
BOT, OTHER_BOT = 100, 200
NO_PACING = Pacing()
MODELS = [ModelSettings(name="one", coze_bot_id=BOT, channel_id=1)]


def pool(count: int = 3, pacing: Pacing = NO_PACING, seed: int = 7) -> TokenPool:
    accounts = [
        PoolToken(label=f"user token #{n}", fingerprint=fingerprint(f"t{n}"), pacing=pacing)
        for n in range(1, count + 1)
    ]
    return TokenPool(accounts, ResetTime.parse("00:00 UTC"), rng=random.Random(seed))


def post(accounts: TokenPool, token: PoolToken, now: float) -> None:
    """Take, post and end a reply with `token` at `now`."""
    accounts.take(token)
    accounts.posted(token, now, counted=True)
    accounts.release(token, claimed=False)


def test_the_least_busy_token_is_chosen_and_ties_are_random() -> None:
    accounts = pool()
    a, b, c = accounts.tokens
    a.in_flight = 1
    b.requests_today, b.day_start = (
        5,
        accounts.reset.last_at_or_before(datetime.fromtimestamp(NOON, UTC)).timestamp(),
    )
    assert accounts.choose(BOT, NOON) is c, "fewest in flight, then fewest posts today"
    c.in_flight = 2
    assert accounts.choose(BOT, NOON) is b
    winners = set()
    for seed in range(60):
        chosen = pool(seed=seed).choose(BOT, NOON)
        assert chosen is not None
        winners.add(chosen.label)
    assert len(winners) == 3, "every token wins some ties"


def test_resting_invalid_disabled_and_excluded_tokens_are_skipped() -> None:
    accounts = pool()
    a, b, c = accounts.tokens
    accounts.rest(b, BOT, NOON)
    c.invalid = True
    assert accounts.choose(BOT, NOON) is a
    assert accounts.choose(OTHER_BOT, NOON, exclude=[a.fingerprint, c.fingerprint]) is b, (
        "a rest is per Coze bot"
    )
    assert accounts.choose(BOT, NOON, exclude=[a.fingerprint]) is None
    a.disabled = True
    assert not accounts.any_usable(BOT, NOON)
    assert standing(accounts, a, [BOT], NOON).reason == ADMIN_DISABLED
    b.enabled = False
    assert standing(accounts, b, [BOT], NOON).reason == SETTINGS_DISABLED


def test_a_token_in_its_gap_or_at_max_in_flight_is_not_free() -> None:
    accounts = pool(1, Pacing(max_in_flight=2, min_gap=1.5, jitter=1.0))
    (a,) = accounts.tokens
    accounts.take(a)
    assert accounts.choose(BOT, NOON) is None, "claimed: its next post is someone's"
    accounts.posted(a, NOON, counted=True)
    assert NOON + 1.5 <= a.ready_at <= NOON + 2.5
    assert accounts.choose(BOT, a.ready_at - 0.01) is None, "inside its gap"
    assert accounts.next_free_at(NOON) == a.ready_at
    assert accounts.choose(BOT, a.ready_at) is a
    accounts.take(a)
    accounts.posted(a, a.ready_at, counted=True)
    assert a.in_flight == 2
    assert accounts.choose(BOT, NOON + 100) is None, "at max_in_flight"
    assert accounts.next_free_at(NOON) is None
    accounts.release(a, claimed=False)
    assert accounts.choose(BOT, NOON + 100) is a


def test_jitter_spreads_the_gaps() -> None:
    accounts = pool(1, Pacing(min_gap=1.0, jitter=1.0))
    (a,) = accounts.tokens
    gaps = []
    for n in range(50):
        accounts.posted(a, NOON + n * 10, counted=False)
        gaps.append(a.ready_at - (NOON + n * 10))
    assert all(1.0 <= gap <= 2.0 for gap in gaps)
    assert max(gaps) - min(gaps) > 0.5


def test_a_daily_cap_caps_the_token_until_the_reset() -> None:
    accounts = pool(2, Pacing(daily_cap=2))
    a, b = accounts.tokens
    post(accounts, a, NOON)
    post(accounts, a, NOON + 1)
    assert accounts.capped_until(a, NOON + 2) == MIDNIGHT
    where = standing(accounts, a, [BOT], NOON + 2)
    assert (where.state, where.since, where.until) == (TokenState.CAPPED, NOON + 1, MIDNIGHT)
    assert accounts.choose(BOT, NOON + 2) is b
    assert accounts.earliest_return(BOT, NOON + 2) == MIDNIGHT
    assert accounts.choose(BOT, MIDNIGHT, exclude=[b.fingerprint]) is a, "a new day"
    tokens, models = pool_report(accounts, MODELS, NOON + 2)
    assert [t.state for t in tokens] == [TokenState.CAPPED, TokenState.HEALTHY]
    assert tokens[0].resting_until is not None
    assert tokens[0].daily_cap == 2
    assert tokens[0].posts_today == 2
    assert models[0].tokens_available == 1


def test_a_rest_ends_at_the_reset() -> None:
    accounts = pool(1)
    (a,) = accounts.tokens
    assert accounts.rest(a, BOT, NOON) == MIDNIGHT
    assert accounts.choose(BOT, MIDNIGHT - 1) is None
    assert accounts.earliest_return(BOT, NOON) == MIDNIGHT
    assert standing(accounts, a, [BOT], NOON).since == NOON
    assert accounts.choose(BOT, MIDNIGHT) is a
    assert accounts.earliest_return(BOT, MIDNIGHT) is None
    assert standing(accounts, a, [BOT], MIDNIGHT + 1).since == MIDNIGHT, "healthy since the rest ended"


def test_states_and_daily_counts() -> None:
    accounts = pool(2)
    a, b = accounts.tokens
    accounts.rest(a, BOT, NOON)
    assert standing(accounts, a, [BOT], NOON).state is TokenState.RESTING
    assert standing(accounts, a, [BOT, OTHER_BOT], NOON).state is TokenState.HEALTHY
    b.invalid = True
    assert standing(accounts, b, [BOT], NOON).state is TokenState.INVALID
    accounts.count_request(a, NOON)
    accounts.count_request(a, NOON + 60)
    assert accounts.posts_today(a, NOON + 120) == 2
    assert accounts.posts_today(a, MIDNIGHT + 1) == 0, "a new day starts at the reset"
    accounts.count_request(a, MIDNIGHT + 1)
    assert a.requests_today == 1


def test_a_reload_adds_keeps_and_retires_tokens() -> None:
    accounts = pool(2)
    a, b = accounts.tokens
    post(accounts, a, NOON)
    accounts.take(b)
    new = TokenSpec("fresh", fingerprint("t9"), Pacing(max_in_flight=3))
    gone = accounts.apply([TokenSpec("renamed", a.fingerprint, Pacing(min_gap=2.0)), new], NOON + 1)
    assert gone == []
    assert [t.label for t in accounts.tokens] == ["renamed", "fresh", "user token #2"]
    assert accounts.tokens[0] is a, "kept by fingerprint"
    assert (a.requests_today, a.pacing.min_gap) == (1, 2.0)
    assert standing(accounts, b, [BOT], NOON + 1).state is TokenState.RETIRING
    assert not accounts.usable(b, BOT, NOON + 1), "takes no new prompts"
    assert accounts.release(b, claimed=True), "it leaves with its last prompt"
    assert b not in accounts.tokens
    accounts.apply([TokenSpec("back", b.fingerprint)], NOON + 2)
    assert accounts.tokens == [b], "listed again: the same token"
    assert b.retiring_since is None
    assert accounts.apply([], NOON + 3) == [b]


def test_restore_takes_over_the_stored_state() -> None:
    accounts = pool(2)
    a, b = accounts.tokens
    row = StoredToken(b.fingerprint, invalid=True, day_start=0.0, requests_today=5, invalid_reason="401")
    later = StoredToken(fingerprint("t7"), False, 0.0, 0, disabled=True, disabled_since=NOON)
    accounts.restore(
        {b.fingerprint: row, later.fingerprint: later},
        {(a.fingerprint, BOT): MIDNIGHT, ("someone-else", BOT): MIDNIGHT},
        {OTHER_BOT: MIDNIGHT},
    )
    assert a.resting_until(BOT, NOON) == MIDNIGHT
    assert b.invalid
    assert b.stored() == row
    assert accounts.model_resting_until(OTHER_BOT, NOON) == MIDNIGHT
    assert accounts.model_resting_until(OTHER_BOT, MIDNIGHT) is None
    accounts.apply([TokenSpec("added later", later.fingerprint)], NOON)
    assert accounts.tokens[0].disabled, "a token a reload adds finds what the store kept of it"


def test_fingerprints_hide_the_token() -> None:
    token = "mfa.secret-token-value"
    assert token not in fingerprint(token)
    assert fingerprint(token) == fingerprint(token)
