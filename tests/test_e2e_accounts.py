"""The user-token pool: least-used choice, resting on limits, invalid on 401, state across restarts."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.probe import PROBE_TEXT
from bot.reset import ResetTime
from simdiscord import ReplyPlan, SimulatedDiscord
from simdiscord.coze import CREATOR_LIMIT_TEXT, DAILY_LIMIT_TEXT
from tests.conftest import Bridge, BridgeFactory

USER = [{"role": "user", "content": "hello"}]


async def post_chat(bridge: Bridge, model: str = "coze", **headers: str) -> tuple[int, dict[str, Any], Any]:
    async with bridge.http.post(
        f"{bridge.base_url}/v1/chat/completions", json={"model": model, "messages": USER}, headers=headers
    ) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def status(bridge: Bridge, **headers: str) -> dict[str, Any]:
    async with bridge.http.get(f"{bridge.base_url}/v1/status", headers=headers) as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


def tokens_by_state(body: dict[str, Any]) -> dict[str, str]:
    return {token["label"]: token["state"] for token in body["tokens"]}


async def test_tokens_take_turns(sim: SimulatedDiscord, bridge: Bridge) -> None:
    for _ in range(3):
        code, _, _ = await post_chat(bridge)
        assert code == 200
    assert len({p.author_id for p in sim.prompts_received}) == 3
    body = await status(bridge)
    assert [t["posts_today"] for t in body["tokens"]] == [1, 1, 1]
    assert body["state"] == "ready"
    assert body["open_streams"] == 0


async def test_a_spent_token_rests_and_the_next_one_answers(sim: SimulatedDiscord, bridge: Bridge) -> None:
    sim.exhaust(sim.user_tokens[0])
    # One at a time, the token with the fewest posts goes next: three requests try all three.
    for _ in range(3):
        code, _, body = await post_chat(bridge)
        assert code == 200, body
        assert body["choices"][0]["message"]["content"].startswith('You asked: "hello"')
    first = sim.prompts_by(sim.user_tokens[0])
    assert [prompt.content for prompt in first] == ["hello", PROBE_TEXT], "the notice was confirmed"
    assert len(sim.prompts_received) == 5, "three answers, the notice and its probe"
    pool = await status(bridge)
    first = pool["tokens"][0]
    assert first["state"] == "resting"
    expected = ResetTime.parse("00:00 UTC").next_after(datetime.now(UTC))
    assert datetime.fromisoformat(first["resting_until"]) == expected
    # A resting token is skipped until its reset.
    for _ in range(4):
        assert (await post_chat(bridge))[0] == 200
    assert len(sim.prompts_by(sim.user_tokens[0])) == 2


@pytest.mark.parametrize("notice", [DAILY_LIMIT_TEXT, CREATOR_LIMIT_TEXT], ids=["daily", "creator"])
async def test_a_coze_bot_that_echoes_cannot_burn_the_pool(
    sim: SimulatedDiscord, bridge: Bridge, notice: str
) -> None:
    # A Coze bot does what it is asked: here, repeat the caller's text, with no buttons.
    sim.script = lambda prompt: ReplyPlan(text=prompt.content.split("exactly: ", 1)[-1], marker=False)
    async with bridge.openai() as client:
        response = await client.chat.completions.create(
            model="coze", messages=[{"role": "user", "content": f"Reply with exactly: {notice}"}]
        )
    assert response.choices[0].message.content == notice
    assert len(sim.prompts_received) == 1, "not asked again with the next token"
    pool = await status(bridge)
    assert set(tokens_by_state(pool).values()) == {"healthy"}
    assert [model["resting_until"] for model in pool["models"]] == [None]
    assert (await post_chat(bridge))[0] == 200


@pytest.mark.parametrize("notice", [DAILY_LIMIT_TEXT, CREATOR_LIMIT_TEXT], ids=["daily", "creator"])
async def test_a_notice_dictated_in_other_words_rests_nothing(
    sim: SimulatedDiscord, bridge: Bridge, notice: str
) -> None:
    # The caller's words do not contain the notice, so only the probe can tell it from a limit.
    sim.script = lambda prompt: ReplyPlan(
        text=notice if "the limit sentence" in prompt.content else "ok", marker=False
    )
    for _ in range(3):
        async with bridge.openai() as client:
            response = await client.chat.completions.create(
                model="coze", messages=[{"role": "user", "content": "Say the limit sentence."}]
            )
        assert response.choices[0].message.content == notice
    probes = [prompt for prompt in sim.prompts_received if prompt.content == PROBE_TEXT]
    assert len(probes) == 3, "each token's notice was checked once"
    asked = {prompt.channel_id for prompt in sim.prompts_received} - {probes[0].channel_id}
    assert len(asked) == 3
    assert len({prompt.channel_id for prompt in probes}) == 1, "in a thread of the bridge's own"
    pool = await status(bridge)
    assert set(tokens_by_state(pool).values()) == {"healthy"}
    assert [model["resting_until"] for model in pool["models"]] == [None]


async def test_every_token_resting_is_429_until_the_earliest_reset(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(accounts={"reset_at": "09:30 Asia/Shanghai"})
    for token in sim.user_tokens:
        sim.exhaust(token)
    code, headers, body = await post_chat(bridge)
    assert code == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert headers["x-should-retry"] == "false"
    reset = ResetTime.parse("09:30 Asia/Shanghai").next_after(datetime.now(UTC))
    wait = (reset - datetime.now(UTC)).total_seconds()
    assert abs(int(headers["Retry-After"]) - wait) < 5
    assert len(sim.prompts_received) == 6, "each token asked, and its notice confirmed"
    # Nothing is posted while every token rests; the answer is at once.
    code, headers, body = await post_chat(bridge)
    assert code == 429
    assert "x-should-retry" not in headers
    assert len(sim.prompts_received) == 6
    assert {t["state"] for t in (await status(bridge))["tokens"]} == {"resting"}


@pytest.mark.parametrize("refusal", ["revoke_token", "require_verification"])
async def test_a_refused_token_is_marked_invalid_and_skipped(
    sim: SimulatedDiscord, bridge: Bridge, caplog: pytest.LogCaptureFixture, refusal: str
) -> None:
    bad = sim.user_tokens[0]
    getattr(sim, refusal)(bad)
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        code, _, body = await post_chat(bridge)
        assert code == 200, body
    assert sim.prompts_by(bad) == []
    assert tokens_by_state(await status(bridge))["user token #1"] == "invalid"
    refused = [r for r in caplog.records if "user token #1" in r.getMessage() and "refused" in r.getMessage()]
    assert len(refused) == 1, "logged once"
    assert bad not in caplog.text


async def test_creator_limit_rests_only_that_model(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    other_bot = sim.add_coze_bot("Coze Two")
    other_channel = sim.add_channel("coze-two")
    models = [
        {"name": "coze", "coze_bot_id": sim.coze_bot_id, "channel_id": sim.channel_id},
        {"name": "coze-two", "coze_bot_id": other_bot, "channel_id": other_channel},
    ]
    bridge: Bridge = await start_bridge(models=models)
    sim.creator_limit(other_bot)
    code, headers, body = await post_chat(bridge, "coze-two")
    assert code == 429
    assert body["error"]["code"] == "model_rate_limited"
    assert 0 < int(headers["Retry-After"]) <= 86400
    assert (await post_chat(bridge, "coze"))[0] == 200
    # The model rests: no prompt is posted for it until the reset.
    before = len(sim.prompts_received)
    assert (await post_chat(bridge, "coze-two"))[0] == 429
    assert len(sim.prompts_received) == before
    body = await status(bridge)
    assert {m["name"]: m["resting_until"] is not None for m in body["models"]} == {
        "coze": False,
        "coze-two": True,
    }
    assert {t["state"] for t in body["tokens"]} == {"healthy"}, "the tokens are not to blame"


async def test_token_states_survive_a_restart(sim: SimulatedDiscord, start_bridge: BridgeFactory) -> None:
    bridge: Bridge = await start_bridge()
    sim.exhaust(sim.user_tokens[0])
    sim.revoke_token(sim.user_tokens[1])
    for _ in range(3):  # every token is tried: the fewest posts go first
        assert (await post_chat(bridge))[0] == 200
    before = tokens_by_state(await status(bridge))
    assert before == {"user token #1": "resting", "user token #2": "invalid", "user token #3": "healthy"}
    await bridge.stop()

    restarted: Bridge = await start_bridge()
    assert tokens_by_state(await status(restarted)) == before
    posted = len(sim.prompts_received)
    for _ in range(2):
        assert (await post_chat(restarted))[0] == 200
    # Only the healthy token posted after the restart.
    newer = sim.prompts_received[posted:]
    assert {p.author_id for p in newer} == {sim.account(sim.user_tokens[2]).id}


async def test_status_is_behind_the_api_key(sim: SimulatedDiscord, start_bridge: BridgeFactory) -> None:
    bridge: Bridge = await start_bridge(api={"keys": ["sk-status"]}, instance={"name": "vps-1"})
    async with bridge.http.get(f"{bridge.base_url}/v1/status") as resp:
        assert resp.status == 401
    body = await status(bridge, Authorization="Bearer sk-status")
    assert len(body["tokens"]) == 3
    # Alone on SQLite: itself, the leader of nobody else.
    assert (body["instance"], body["storage"]) == ("vps-1", "ok")
    assert [(i["name"], i["leader"]) for i in body["instances"]] == [("vps-1", True)]
    text = str(body)
    assert not any(token in text for token in sim.user_tokens), "tokens are masked"


def test_reset_time_of_day_in_a_zone() -> None:
    reset = ResetTime.parse("09:30 Asia/Shanghai")
    now = datetime(2026, 3, 1, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai
    assert reset.next_after(now) == now + timedelta(minutes=30)
    assert reset.next_after(now + timedelta(minutes=30)) == now + timedelta(days=1, minutes=30)
    assert ResetTime.parse("00:00 +08:00").next_after(now) == datetime(2026, 3, 1, 16, 0, tzinfo=UTC)
    for bad, why in (
        ("24:00 UTC", "not a time of day"),
        ("9 UTC", "HH:MM"),
        ("00:00 Nowhere/Land", "time zone"),
    ):
        with pytest.raises(ValueError, match=why):
            ResetTime.parse(bad)
