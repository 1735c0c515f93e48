"""Fit for gateways (one-api, new-api, LiteLLM): the health model, and errors that never switch a
channel off for good, through the real bridge on the simulated Discord and real clients."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest

from bot.coze_texts import Trouble
from bot.follow import LimitNotice
from bot.gateway import Gateway
from bot.interface import BridgeError, Finished
from bot.status import BackendStatus, BridgeState, IntentMissing, ModelStatus, TokenReport, TokenState
from bot.token_pool import fingerprint
from bridge_api.errors import APIError
from bridge_api.health_model import unavailable
from simdiscord import ReplyPlan, SimulatedDiscord
from simdiscord.coze import CREATOR_LIMIT_TEXT
from tests.conftest import Bridge, BridgeFactory

HEALTH = "bridge-health"
KEY = "sk-gateway"
AUTH = {"Authorization": f"Bearer {KEY}"}
# What the gateways send to test a channel (shared/operating-notes.md).
ONE_API_TEST = {
    "model": HEALTH,
    "messages": [
        {"role": "user", "content": "Output only your specific model name with no additional text."}
    ],
}
NEW_API_TEST = {"model": HEALTH, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}

# What one-api (monitor/manage.go) and new-api (ShouldDisableChannel, AutomaticDisableKeywords)
# take for "switch this channel off for good". Only a real bad key may look like that.
SWITCH_OFF_TYPES = {
    "insufficient_quota",
    "insufficient_user_quota",
    "authentication_error",
    "permission_error",
    "forbidden",
}
SWITCH_OFF_CODES = {
    "invalid_api_key",
    "account_deactivated",
    "billing_not_active",
    "pre_consume_token_quota_failed",
    "Arrearage",
}
SWITCH_OFF_WORDS = (
    "credit",
    "balance",
    "quota",
    "permission denied",
    "organization has been disabled",
    "your access was terminated",
    "violation of our policies",
    "api key not valid",
    "api key expired",
    "the security token included in the request is invalid",
    "operation not allowed",
    "your account is not authorized",
)
# Coze's notices, with words a gateway must never read in `error.message`.
TAIL = " Your credit balance is too low: top up your balance."
DAILY = "Hi there! You've used up your credits for today." + TAIL
BUSY = "There are too many users now. Please try again a bit later." + TAIL
BROKEN = "Something wrong occurs, please retry." + TAIL


def assert_gateway_safe(error: dict[str, Any], status: int | None) -> None:
    assert status != 401, error
    assert error["type"] not in SWITCH_OFF_TYPES, error
    assert error["code"] not in SWITCH_OFF_CODES, error
    message = error["message"].lower()
    assert not [word for word in SWITCH_OFF_WORDS if word in message], error


def notice(text: str) -> ReplyPlan:
    return ReplyPlan(text=text, chunk_chars=9, step_delay=0.002, marker=False)


async def post(
    bridge: Bridge, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    async with bridge.http.post(
        f"{bridge.base_url}/v1/chat/completions", json=body, headers=AUTH if headers is None else headers
    ) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def stream(bridge: Bridge, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """The stream's frames as JSON, after checking the SSE framing and its [DONE]."""
    async with bridge.http.post(
        f"{bridge.base_url}/v1/chat/completions", json=body | {"stream": True}, headers=AUTH
    ) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    frames = [frame for frame in raw.split("\n\n") if frame and not frame.startswith(":")]
    assert all(frame.startswith("data: ") for frame in frames), raw
    assert frames[-1] == "data: [DONE]"
    return resp.status, [json.loads(frame[6:]) for frame in frames[:-1]]


def posts(sim: SimulatedDiscord) -> int:
    return sum(request.method == "POST" for request in sim.requests_seen)


def assert_one_api_test_passes(body: dict[str, Any]) -> None:
    # one-api fails a channel test without usage, with empty choices or non-string content;
    # new-api fails a 200 whose body carries `error`.
    assert "error" not in body
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == HEALTH
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "ok"}
    assert choice["finish_reason"] == "stop"
    counts = body["usage"]
    assert counts["prompt_tokens"] > 0
    assert counts["completion_tokens"] > 0
    assert counts["total_tokens"] == counts["prompt_tokens"] + counts["completion_tokens"]


async def test_one_api_and_new_api_channel_tests_pass_without_discord(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(api={"keys": [KEY]})
    before = posts(sim)
    async with bridge.http.get(f"{bridge.base_url}/v1/models", headers=AUTH) as resp:
        assert [model["id"] for model in (await resp.json())["data"]] == ["coze", HEALTH]
    async with bridge.http.get(f"{bridge.base_url}/v1/models/{HEALTH}", headers=AUTH) as resp:
        assert (resp.status, (await resp.json())["id"]) == (200, HEALTH)
    for test in (ONE_API_TEST, NEW_API_TEST):
        started = time.perf_counter()
        status, _, body = await post(bridge, test)
        assert time.perf_counter() - started < 5, "gateways switch a channel off past 5 s"
        assert status == 200, body
        assert_one_api_test_passes(body)
    # It needs the caller's key like any model, and the 401 stays the one that should switch off.
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        status, _, body = await post(bridge, ONE_API_TEST, headers)
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    assert sim.prompts_received == []
    assert posts(sim) == before, "nothing is posted to Discord"


async def test_the_health_model_streams_in_openai_shapes(sim: SimulatedDiscord, bridge: Bridge) -> None:
    status, chunks = await stream(bridge, NEW_API_TEST | {"stream_options": {"include_usage": True}})
    assert status == 200
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    assert chunks[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    ]
    assert chunks[1]["choices"] == [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}]
    assert chunks[2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert chunks[3]["choices"] == []
    assert chunks[3]["usage"]["total_tokens"] > 0
    assert len(chunks) == 4

    async with bridge.openai() as client:
        answer = await client.chat.completions.create(
            model=HEALTH, messages=[{"role": "user", "content": "hi"}]
        )
        streamed = await client.chat.completions.create(
            model=HEALTH,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        parts = [chunk async for chunk in streamed]
    assert answer.choices[0].message.content == "ok"
    assert answer.usage is not None
    assert answer.usage.total_tokens > 0
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == "ok"
    assert [p.choices[0].finish_reason for p in parts if p.choices][-1] == "stop"
    assert parts[-1].usage is not None
    assert parts[-1].usage.completion_tokens > 0
    assert sim.prompts_received == []


async def test_the_health_model_is_logged_and_counted_but_never_rate_limited(
    sim: SimulatedDiscord, start_bridge: BridgeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    bridge: Bridge = await start_bridge(api={"keys": [KEY], "rate_limit_per_minute": 1})
    caplog.set_level(logging.INFO, logger="coze_bridge.access")
    for _ in range(3):
        assert (await post(bridge, NEW_API_TEST))[0] == 200
    real = {"model": "coze", "messages": [{"role": "user", "content": "hello"}]}
    assert (await post(bridge, real))[0] == 200, "the health calls did not count"
    assert (await post(bridge, real))[0] == 429
    assert (await post(bridge, NEW_API_TEST))[0] == 200, "a gateway's test is never shut out"
    lines = [r.getMessage() for r in caplog.records if r.name == "coze_bridge.access"]
    health = [line for line in lines if f"model={HEALTH}" in line]
    assert len(health) == 4, lines
    assert all(" 200 " in line for line in health), lines
    async with bridge.http.get(f"{bridge.base_url}/metrics") as resp:
        scrape = await resp.text()
    assert 'coze_bridge_requests_total{route="/v1/chat/completions",status="200"} 5.0' in scrape
    assert len(sim.prompts_received) == 1


async def test_503_while_the_gateway_is_not_ready(
    sim: SimulatedDiscord, start_bridge: BridgeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Gateway, "refused_retry_seconds", 0.05)
    sim.message_content_intent = False  # Discord refuses the gateway session until it is on
    bridge: Bridge = await start_bridge(wait_ready=False)
    for test in (ONE_API_TEST, NEW_API_TEST | {"stream": True}):
        status, headers, body = await post(bridge, test)
        assert (status, body["error"]["code"]) == (503, "gateway_not_ready")
        assert headers["Retry-After"] == "5"
        assert_gateway_safe(body["error"], status)
    sim.message_content_intent = True
    async with asyncio.timeout(5):
        await bridge.backend.wait_ready()
    status, _, body = await post(bridge, ONE_API_TEST)
    assert status == 200
    assert_one_api_test_passes(body)
    assert sim.prompts_received == []


async def test_503_while_every_token_is_refused_by_discord(sim: SimulatedDiscord, bridge: Bridge) -> None:
    for token in sim.user_tokens:
        sim.revoke_token(token)
        assert (await bridge.backend.check_token(fingerprint(token))).state is TokenState.INVALID
    before = posts(sim)
    status, headers, body = await post(bridge, ONE_API_TEST)
    assert (status, body["error"]["code"]) == (503, "no_token_available")
    assert headers["Retry-After"] == "60", "nothing says when an invalid token comes back"
    assert_gateway_safe(body["error"], status)
    assert posts(sim) == before

    sim.reinstate_token(sim.user_tokens[1])
    assert (await bridge.backend.check_token(fingerprint(sim.user_tokens[1]))).state is TokenState.HEALTHY
    assert (await post(bridge, ONE_API_TEST))[0] == 200


async def test_503_until_the_reset_while_the_coze_bot_rests(sim: SimulatedDiscord, bridge: Bridge) -> None:
    sim.creator_limit(sim.coze_bot_id)
    status, _, body = await post(
        bridge, {"model": "coze", "messages": [{"role": "user", "content": "hello"}]}
    )
    assert (status, body["error"]["code"]) == (429, "model_rate_limited")
    status, headers, body = await post(bridge, NEW_API_TEST)
    assert (status, body["error"]["code"]) == (503, "no_token_available")
    reset = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    assert abs(int(headers["Retry-After"]) - (reset - datetime.now(UTC)).total_seconds()) < 5


async def test_the_health_model_follows_its_setting(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    off: Bridge = await start_bridge(api={"health_model": ""})
    async with off.http.get(f"{off.base_url}/v1/models") as resp:
        assert [model["id"] for model in (await resp.json())["data"]] == ["coze"]
    status, _, body = await post(off, ONE_API_TEST)
    assert (status, body["error"]["code"]) == (404, "model_not_found")
    renamed: Bridge = await start_bridge(api={"health_model": "ping"})
    status, _, body = await post(renamed, ONE_API_TEST | {"model": "ping"})
    assert (status, body["model"], body["choices"][0]["message"]["content"]) == (200, "ping", "ok")
    assert sim.prompts_received == []


def test_the_health_verdict_names_the_reason_and_the_wait() -> None:
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    ready = BackendStatus(BridgeState.READY, 0, (), (ModelStatus("coze", None, tokens_available=2),))
    assert unavailable(ready, ["coze"], now) is None
    assert unavailable(ready, ["other"], now) is not None, "only the caller's models count"
    for state in (BridgeState.STARTING, BridgeState.CONNECTING, BridgeState.DEGRADED, BridgeState.STOPPING):
        refusal = unavailable(BackendStatus(state, 0, (), ready.models), ["coze"], now)
        assert refusal is not None
        assert (refusal.status, refusal.code) == (503, "gateway_not_ready")
    blind = BackendStatus(
        BridgeState.READY, 0, (), ready.models, intent_missing=IntentMissing(now, "blank_messages")
    )
    refusal = unavailable(blind, ["coze"], now)
    assert refusal is not None
    assert refusal.code == "message_content_intent"
    back = now + timedelta(minutes=90)
    resting = TokenReport(
        "a" * 16, "user token #1", TokenState.RESTING, now, "limit", back, {}, 0, 2, 5, None
    )
    spent = BackendStatus(BridgeState.READY, 0, (resting,), (ModelStatus("coze", None, tokens_available=0),))
    refusal = unavailable(spent, ["coze"], now)
    assert refusal is not None
    assert (refusal.code, refusal.headers["Retry-After"]) == (
        "no_token_available",
        "5400",
    )
    model_rests = BackendStatus(BridgeState.READY, 0, (), (ModelStatus("coze", back, tokens_available=2),))
    refusal = unavailable(model_rests, ["coze"], now)
    assert refusal is not None
    assert refusal.headers["Retry-After"] == "5400"


# The wording rules, on every error the bridge can produce.


def bridge_errors() -> list[type[BridgeError]]:
    found: list[type[BridgeError]] = []
    pending = [BridgeError]
    while pending:
        kind = pending.pop()
        found.append(kind)
        pending.extend(kind.__subclasses__())
    return found


@pytest.mark.parametrize("kind", bridge_errors(), ids=lambda kind: kind.__name__)
def test_no_bridge_error_puts_coze_words_where_gateways_read(kind: type[BridgeError]) -> None:
    error = APIError.from_bridge(kind("what the bridge says", posted=True, notice=DAILY))
    body = error.body()["error"]
    assert_gateway_safe(body, error.status)
    assert body["message"] == "what the bridge says"
    assert body["coze_notice"] == DAILY


@pytest.mark.parametrize("trouble", [Trouble.DAILY_LIMIT, Trouble.CREATOR_LIMIT])
def test_a_limit_notice_keeps_cozes_words_apart(trouble: Trouble) -> None:
    error = LimitNotice(trouble, Finished("stop", f"  {CREATOR_LIMIT_TEXT}{TAIL}\n")).error()
    assert error.notice == CREATOR_LIMIT_TEXT + TAIL
    assert_gateway_safe(APIError.from_bridge(error).body()["error"], None)


async def expect_error(
    bridge: Bridge, code: str, status: int, notice: str | None, *, stream_too: bool = True
) -> str:
    """The plain request fails with `code`, and (if `stream_too`) the streamed one in-band, both
    within the wording rules, with Coze's `notice` (if any) in `error.coze_notice`."""
    body = {"model": "coze", "messages": [{"role": "user", "content": "hello"}]}
    got, _, answer = await post(bridge, body)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert_gateway_safe(answer["error"], got)
    assert answer["error"].get("coze_notice") == notice
    if stream_too:
        got, chunks = await stream(bridge, body)
        assert got == 200
        error = chunks[-1]["error"]
        assert error["code"] == code
        assert_gateway_safe(error, None)
    message: str = answer["error"]["message"]
    return message


@pytest.mark.parametrize(
    ("text", "status", "code"),
    [(BUSY, 503, "coze_busy"), (BROKEN, 502, "upstream_error")],
    ids=["busy", "upstream"],
)
async def test_cozes_trouble_words_stay_out_of_the_message(
    sim: SimulatedDiscord, start_bridge: BridgeFactory, text: str, status: int, code: str
) -> None:
    bridge: Bridge = await start_bridge(api={"keys": [KEY]}, completion={"busy_backoff_seconds": 0.01})
    sim.script = lambda prompt: notice(text)
    await expect_error(bridge, code, status, text)


async def test_limit_errors_keep_cozes_words_apart(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(api={"keys": [KEY]})
    sim.script = lambda prompt: notice(DAILY)  # every token gets it, and its probe confirms it
    await expect_error(bridge, "rate_limit_exceeded", 429, DAILY, stream_too=False)
    # Every token rests now: refused before posting, in the bridge's words alone.
    await expect_error(bridge, "rate_limit_exceeded", 429, None)


async def test_creator_limit_keeps_cozes_words_apart(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(api={"keys": [KEY]})
    sim.creator_limit(sim.coze_bot_id)
    await expect_error(bridge, "model_rate_limited", 429, CREATOR_LIMIT_TEXT, stream_too=False)
    message = await expect_error(bridge, "model_rate_limited", 429, None)
    assert "reached Coze's message limit" in message


async def test_capped_tokens_are_told_without_those_words(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(api={"keys": [KEY]}, accounts={"daily_cap": 1})
    for _ in sim.user_tokens:
        assert (await post(bridge, {"model": "coze", "messages": [{"role": "user", "content": "hi"}]}))[
            0
        ] == 200
    assert "daily_cap" in await expect_error(bridge, "rate_limit_exceeded", 429, None)


async def test_refused_tokens_are_told_without_those_words(sim: SimulatedDiscord, bridge: Bridge) -> None:
    for token in sim.user_tokens:
        sim.revoke_token(token)
    assert "no valid user token" in await expect_error(bridge, "rate_limit_exceeded", 429, None)


async def test_an_image_reply_without_an_image_keeps_cozes_words_apart(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(images={"instruction": "Describe: "})
    sim.script = lambda prompt: ReplyPlan(text=DAILY[10:], step_delay=0.002)  # an answer, not a notice
    async with bridge.http.post(f"{bridge.base_url}/v1/images/generations", json={"prompt": "a cat"}) as resp:
        status, body = resp.status, await resp.json()
    assert (status, body["error"]["code"]) == (502, "no_image")
    assert_gateway_safe(body["error"], status)
    assert body["error"]["coze_notice"] == DAILY[10:]


async def test_a_model_name_with_those_words_is_not_echoed(bridge: Bridge) -> None:
    status, _, body = await post(bridge, ONE_API_TEST | {"model": "credit-balance"})
    assert (status, body["error"]["code"]) == (404, "model_not_found")
    assert_gateway_safe(body["error"], status)
    async with bridge.openai() as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("gpt-balance")
    assert "balance" not in missing.value.message
    status, _, body = await post(bridge, ONE_API_TEST | {"model": "gpt-4o"})
    assert "'gpt-4o'" in body["error"]["message"], "an ordinary name is still named"
