"""The token pool's rules, with an injected clock (epoch seconds)."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.interface import TokenState
from bot.reset import ResetTime
from bot.store import StoredToken
from bot.token_pool import PoolToken, TokenPool, fingerprint

NOON = datetime(2026, 5, 4, 12, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 5, 5, 0, 0, tzinfo=UTC).timestamp()
BOT, OTHER_BOT = 100, 200


def pool(count: int = 3) -> TokenPool:
    accounts = [
        PoolToken(label=f"user token #{n}", fingerprint=fingerprint(f"t{n}")) for n in range(1, count + 1)
    ]
    return TokenPool(accounts, ResetTime.parse("00:00 UTC"))


def test_round_robin_skips_resting_and_invalid_accounts() -> None:
    accounts = pool()
    a, b, c = accounts.tokens
    assert [accounts.pick(BOT, NOON) for _ in range(4)] == [a, b, c, a]
    accounts.rest(b, BOT, NOON)
    c.invalid = True
    assert [accounts.pick(BOT, NOON) for _ in range(3)] == [a, a, a]
    assert accounts.pick(OTHER_BOT, NOON) is b, "a rest is per Coze bot"
    assert accounts.pick(BOT, NOON, exclude=[a]) is None


def test_a_rest_ends_at_the_reset() -> None:
    accounts = pool(1)
    (a,) = accounts.tokens
    assert accounts.rest(a, BOT, NOON) == MIDNIGHT
    assert accounts.pick(BOT, MIDNIGHT - 1) is None
    assert accounts.earliest_return(BOT, NOON) == MIDNIGHT
    assert accounts.pick(BOT, MIDNIGHT) is a
    assert accounts.earliest_return(BOT, MIDNIGHT) is None


def test_asking_without_advancing_keeps_the_turn() -> None:
    accounts = pool()
    first = accounts.tokens[0]
    assert accounts.pick(BOT, NOON, advance=False) is first
    assert accounts.pick(BOT, NOON) is first


def test_states_and_daily_counts() -> None:
    accounts = pool(2)
    a, b = accounts.tokens
    accounts.rest(a, BOT, NOON)
    assert accounts.state(a, [BOT], NOON) is TokenState.RESTING
    assert accounts.state(a, [BOT, OTHER_BOT], NOON) is TokenState.HEALTHY
    b.invalid = True
    assert accounts.state(b, [BOT], NOON) is TokenState.INVALID
    accounts.count_request(a, NOON)
    accounts.count_request(a, NOON + 60)
    assert accounts.requests_today(a, NOON + 120) == 2
    assert accounts.requests_today(a, MIDNIGHT + 1) == 0, "a new day starts at the reset"
    accounts.count_request(a, MIDNIGHT + 1)
    assert a.requests_today == 1


def test_restore_takes_over_the_stored_state() -> None:
    accounts = pool(2)
    a, b = accounts.tokens
    accounts.restore(
        {b.fingerprint: StoredToken(b.fingerprint, invalid=True, day_start=0.0, requests_today=5)},
        {(a.fingerprint, BOT): MIDNIGHT, ("someone-else", BOT): MIDNIGHT},
        {OTHER_BOT: MIDNIGHT},
    )
    assert a.resting_until(BOT, NOON) == MIDNIGHT
    assert b.invalid
    assert accounts.model_resting_until(OTHER_BOT, NOON) == MIDNIGHT
    assert accounts.model_resting_until(OTHER_BOT, MIDNIGHT) is None


def test_fingerprints_hide_the_token() -> None:
    token = "mfa.secret-token-value"
    assert token not in fingerprint(token)
    assert fingerprint(token) == fingerprint(token)
