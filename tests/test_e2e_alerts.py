"""Alerts from the real bridge on the simulated Discord, delivered to a webhook receiver on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.token_pool import fingerprint
from simdiscord import SimulatedDiscord
from tests.alert_rig import Post, Receiver, receiving
from tests.conftest import Bridge, BridgeFactory

ADMIN_KEY = "sk-admin-alerts-0123456789"
WAIT = 10.0  # the watcher looks every second: a bound, not a pause


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as receiving_one:
        yield receiving_one


async def check(bridge: Bridge, token: str) -> str:
    """POST /admin/tokens/{id}/check; the token's state afterwards."""
    url = f"{bridge.base_url}/admin/tokens/{fingerprint(token)}/check"
    async with bridge.http.post(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as resp:
        assert resp.status == 200, await resp.text()
        state: str = (await resp.json())["state"]
        return state


async def next_post(receiver: Receiver) -> Post:
    async with asyncio.timeout(WAIT):
        return await receiver.arrived.get()


async def test_a_revoked_token_and_an_empty_pool_alert_and_resolve(
    sim: SimulatedDiscord, start_bridge: BridgeFactory, receiver: Receiver
) -> None:
    bridge: Bridge = await start_bridge(
        api={"admin_keys": [ADMIN_KEY]},
        alerts={"webhook_url": receiver.url("/hooks/generic")},
    )
    first = sim.user_tokens[0]
    sim.revoke_token(first)
    assert await check(bridge, first) == "invalid"
    alert = await next_post(receiver)
    assert (alert.body["kind"], alert.body["severity"]) == ("token_invalid", "warning")
    assert fingerprint(first)[:8] in alert.body["message"]
    assert "401" in alert.body["message"]
    assert first not in str(alert.body), "the token itself never leaves the bridge"

    # Every token refused: no token can post for the model.
    for token in sim.user_tokens[1:]:
        sim.revoke_token(token)
        assert await check(bridge, token) == "invalid"
    empty = await next_post(receiver)
    assert (empty.body["kind"], empty.body["severity"]) == ("pool_empty", "critical")
    assert "'coze'" in empty.body["message"]

    # The owner fixes the accounts: the next checks bring the pool back, and both clear.
    for token in sim.user_tokens:
        sim.reinstate_token(token)
        assert await check(bridge, token) == "healthy"
    cleared = {
        (post.body["kind"], post.body["details"]["resolved"])
        for post in [await next_post(receiver), await next_post(receiver)]
    }
    assert cleared == {("pool_empty", True), ("token_invalid", True)}
    # One message per kind: the other two tokens' invalid marks came inside the interval.
    assert [post.body["kind"] for post in receiver.posts].count("token_invalid") == 2
