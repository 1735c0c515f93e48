"""Every path ends: Coze's trouble texts, silence and Discord faults, through the whole stack."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import openai
import pytest

from bot.probe import PROBE_TEXT
from bot.status import BridgeState
from simdiscord import ReplyPlan, SimulatedDiscord
from tests.conftest import Bridge, BridgeFactory

USER = [{"role": "user", "content": "hello"}]
DAILY = "You have exceeded the daily limit for sending messages to the bot. Please try again later."
CREATOR = (
    "The bot's usage is covered by the developer, but due to the developer's message credits being exhausted, "
    "the bot is temporarily unavailable."
)
BUSY = "There are too many users now. Please try again a bit later."
BROKEN = "Something wrong occurs, please retry. If the error persists, please contact the support team."
REFUSAL = "I'm sorry, but I can't assist with that."


def notice(text: str) -> ReplyPlan:
    # Trouble comes as an ordinary reply, streamed by edits, usually without buttons.
    return ReplyPlan(text=text, chunk_chars=9, step_delay=0.002, marker=False)


async def sse(bridge: Bridge, body: dict[str, Any]) -> tuple[int, list[str]]:
    async with bridge.http.post(
        f"{bridge.base_url}/v1/chat/completions", json=body | {"stream": True}
    ) as resp:
        frames = [f for f in (await resp.read()).decode().split("\n\n") if f.startswith("data: ")]
        return resp.status, frames


@pytest.mark.parametrize(
    ("text", "status", "code"),
    [
        (DAILY, 429, "rate_limit_exceeded"),
        (CREATOR, 429, "model_rate_limited"),
        (BROKEN, 502, "upstream_error"),
    ],
)
async def test_trouble_texts_become_errors(
    sim: SimulatedDiscord, bridge: Bridge, text: str, status: int, code: str
) -> None:
    sim.script = lambda prompt: notice(text)
    async with bridge.http.post(
        f"{bridge.base_url}/v1/chat/completions", json={"model": "coze", "messages": USER}
    ) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
        assert resp.headers["x-should-retry"] == "false"
        if status == 429:
            assert 0 < int(resp.headers["Retry-After"]) <= 86400
    assert error["code"] == code
    assert text.split(".")[0] in error["coze_notice"]

    status_code, frames = await sse(bridge, {"model": "coze", "messages": USER})
    assert status_code == 200
    assert frames[-1] == "data: [DONE]"
    chunks = [json.loads(f[6:]) for f in frames[:-1]]
    assert chunks[-1]["error"]["code"] == code
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if "choices" in c)
    assert streamed == "", "a trouble notice must never be streamed as answer text"


async def test_refusal_is_content_with_content_filter(sim: SimulatedDiscord, bridge: Bridge) -> None:
    sim.script = lambda prompt: notice(REFUSAL)
    async with bridge.openai() as client:
        response = await client.chat.completions.create(model="coze", messages=USER)
        assert response.choices[0].message.content == REFUSAL
        assert response.choices[0].finish_reason == "content_filter"
        stream = await client.chat.completions.create(model="coze", messages=USER, stream=True)
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REFUSAL
    assert chunks[-1].choices[0].finish_reason == "content_filter"


async def test_busy_is_retried_then_answered(sim: SimulatedDiscord, start_bridge: BridgeFactory) -> None:
    bridge: Bridge = await start_bridge(completion={"busy_backoff_seconds": 0.01})
    replies = iter([notice(BUSY), notice(BUSY), ReplyPlan(text="Finally an answer.", step_delay=0.002)])
    sim.script = lambda prompt: next(replies)
    async with bridge.openai() as client:
        stream = await client.chat.completions.create(model="coze", messages=USER, stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == "Finally an answer."
    assert len(sim.prompts_received) == 3
    assert len({p.channel_id for p in sim.prompts_received}) == 1, "retries stay in the request's thread"


async def test_busy_three_times_is_503(sim: SimulatedDiscord, start_bridge: BridgeFactory) -> None:
    bridge: Bridge = await start_bridge(completion={"busy_backoff_seconds": 0.01})
    sim.script = lambda prompt: notice(BUSY)
    async with bridge.openai() as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="coze", messages=USER)
    assert caught.value.status_code == 503
    assert len(sim.prompts_received) == 3


async def test_send_failure_is_502_and_the_next_request_works(sim: SimulatedDiscord, bridge: Bridge) -> None:
    sim.script = lambda prompt: ReplyPlan(text="fine", step_delay=0.002)
    for status in (500, 403):
        sim.fail_next("POST", "/channels/{channel_id}/messages", status)
        async with bridge.http.post(
            f"{bridge.base_url}/v1/chat/completions", json={"model": "coze", "messages": USER}
        ) as resp:
            assert resp.status == 502
            assert (await resp.json())["error"]["code"] == "discord_send_failed"
    sim.fail_next("POST", "/channels/{channel_id}/messages", 500)
    status, frames = await sse(bridge, {"model": "coze", "messages": USER})
    assert status == 200
    assert json.loads(frames[-2][6:])["error"]["code"] == "discord_send_failed"
    assert frames[-1] == "data: [DONE]"
    async with bridge.openai() as client:
        response = await client.chat.completions.create(model="coze", messages=USER)
    assert response.choices[0].message.content == "fine"


@pytest.mark.parametrize("after", [False, True], ids=["lost on the way", "its answer lost"])
async def test_a_post_without_an_answer_is_asked_again_with_its_nonce(
    sim: SimulatedDiscord, bridge: Bridge, after: bool
) -> None:
    sim.script = lambda prompt: ReplyPlan(text="exactly once", step_delay=0.002)
    sim.fail_next("POST", "/channels/{channel_id}/messages", 0, after=after)
    async with bridge.openai() as client:
        response = await client.chat.completions.create(model="coze", messages=USER)
    assert response.choices[0].message.content == "exactly once"
    assert len(sim.prompts_received) == 1, "the prompt is in Discord once"


async def test_no_answer_twice_is_502_that_must_not_be_retried(sim: SimulatedDiscord, bridge: Bridge) -> None:
    sim.fail_next("POST", "/channels/{channel_id}/messages", 0, times=2, after=True)
    async with bridge.http.post(
        f"{bridge.base_url}/v1/chat/completions", json={"model": "coze", "messages": USER}
    ) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "discord_send_failed"
        assert resp.headers["x-should-retry"] == "false", "the prompt may well be in Discord"
    assert len(sim.prompts_received) == 1


async def test_rate_limited_post_is_retried_after_retry_after(sim: SimulatedDiscord, bridge: Bridge) -> None:
    sim.script = lambda prompt: ReplyPlan(text="after the wait", step_delay=0.002)
    sim.fail_next("POST", "/channels/{channel_id}/messages", 429, retry_after=0.05)
    async with bridge.openai() as client:
        response = await client.chat.completions.create(model="coze", messages=USER)
    assert response.choices[0].message.content == "after the wait"
    assert len(sim.prompts_received) == 1


async def test_discord_rate_limit_buckets_are_waited_out(sim: SimulatedDiscord, bridge: Bridge) -> None:
    """Threads in one channel (discord.py) and the parts of split prompts (our REST) share buckets."""
    import asyncio

    sim.script = lambda prompt: ReplyPlan(text=f"answer {prompt.content.split()[-1]}", step_delay=0.002)
    sim.rate_limit(1, window=0.15)
    filler = "A line of a prompt long enough to be split over several Discord messages. " * 60
    async with bridge.openai() as client:
        responses = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="coze", messages=[{"role": "user", "content": f"{filler}\nq{i}"}]
                )
                for i in range(4)
            )
        )
    assert [r.choices[0].message.content for r in responses] == [f"answer q{i}" for i in range(4)]
    assert sim.rate_limited > 0, "the prompts' parts went past the bucket at least once"


async def test_silence_is_an_in_band_timeout_for_streams(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(completion={"first_reply_timeout": 0.3}, api={"ping_seconds": 0.1})
    sim.script = lambda prompt: ReplyPlan(text="", silent=True)
    async with bridge.http.post(
        f"{bridge.base_url}/v1/chat/completions", json={"model": "coze", "messages": USER, "stream": True}
    ) as resp:
        raw = (await resp.read()).decode()
    assert ": ping" in raw
    frames = [f for f in raw.split("\n\n") if f.startswith("data: ")]
    assert json.loads(frames[-2][6:])["error"]["code"] == "timeout"
    assert frames[-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("plan", "prompts"),
    [(notice(DAILY), 3), (notice(CREATOR), 1), (notice(BROKEN), 1), (ReplyPlan(text="", silent=True), 1)],
    ids=["daily-limit", "creator-limit", "upstream", "silent"],
)
async def test_sdk_default_retries_never_post_a_prompt_twice(
    sim: SimulatedDiscord, start_bridge: BridgeFactory, plan: ReplyPlan, prompts: int
) -> None:
    bridge: Bridge = await start_bridge(completion={"first_reply_timeout": 0.3})
    sim.script = lambda prompt: plan
    # The SDK's defaults: 2 retries on 408/409/429/5xx unless the server says x-should-retry: false.
    async with openai.AsyncOpenAI(base_url=bridge.base_url + "/v1", api_key="k") as client:
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(model="coze", messages=USER)
    # A daily-limit notice moves the prompt to the next token: each of the 3 asks once. The
    # SDK's retries then find every token resting and post nothing. (A limit notice is also
    # confirmed by a probe of the bridge's own from the same token.)
    asked = [prompt for prompt in sim.prompts_received if prompt.content != PROBE_TEXT]
    assert len(asked) == prompts
    assert len({prompt.author_id for prompt in asked}) == prompts


async def test_sdk_retries_a_refused_post_before_anything_reached_discord(
    sim: SimulatedDiscord, bridge: Bridge
) -> None:
    sim.script = lambda prompt: ReplyPlan(text="second time lucky", step_delay=0.002)
    sim.fail_next("POST", "/channels/{channel_id}/messages", 500)
    async with openai.AsyncOpenAI(base_url=bridge.base_url + "/v1", api_key="k") as client:
        response = await client.chat.completions.create(model="coze", messages=USER)
    assert response.choices[0].message.content == "second time lucky"
    assert len(sim.prompts_received) == 1


async def read_metrics(bridge: Bridge) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    async with bridge.http.get(f"{bridge.base_url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_show_faults_and_return_to_rest(sim: SimulatedDiscord, bridge: Bridge) -> None:
    sim.fail_next("POST", "/channels/{channel_id}/messages", 500)
    async with bridge.http.post(
        f"{bridge.base_url}/v1/chat/completions", json={"model": "coze", "messages": USER}
    ):
        pass
    sim.script = lambda prompt: notice(DAILY)
    await sse(bridge, {"model": "coze", "messages": USER})
    metrics = await read_metrics(bridge)
    route = "/v1/chat/completions"
    assert metrics[("coze_bridge_requests_total", (("route", route), ("status", "429")))] == 1
    assert metrics[("coze_bridge_requests_total", (("route", route), ("status", "502")))] == 1
    assert metrics[("coze_bridge_upstream_errors_total", (("kind", "rate_limit_exceeded"),))] == 1
    assert metrics[("coze_bridge_upstream_errors_total", (("kind", "discord_send_failed"),))] == 1
    assert metrics[("coze_bridge_open_streams", ())] == 0
    assert metrics[("coze_bridge_gateway_state", (("state", "ready"),))] == 1
    assert bridge.backend.status().open_replies == 0


async def test_client_disconnect_releases_the_request_at_once(sim: SimulatedDiscord, bridge: Bridge) -> None:
    import asyncio

    sim.script = lambda prompt: ReplyPlan(text="x" * 400, chunk_chars=1, step_delay=0.05)
    resp = await bridge.http.post(
        f"{bridge.base_url}/v1/chat/completions", json={"model": "coze", "messages": USER, "stream": True}
    )
    async for line in resp.content:
        if b'"content":"x' in line:
            break
    assert bridge.backend.status().open_replies == 1
    resp.close()
    async with asyncio.timeout(3):
        # Each pass awaits a /metrics read, which lets the server finish the cancelled handler.
        while (await read_metrics(bridge))[
            ("coze_bridge_open_streams", ())
        ] or bridge.backend.status().open_replies:
            pass
    sim.script = lambda prompt: ReplyPlan(text="next one works", step_delay=0.002)
    async with bridge.openai() as client:
        response = await client.chat.completions.create(model="coze", messages=USER)
    assert response.choices[0].message.content == "next one works"


async def test_refused_resume_recovers_missed_edits_over_rest(sim: SimulatedDiscord, bridge: Bridge) -> None:
    answer = "This reply keeps streaming while the gateway session is lost and replaced by a new one."
    sim.script = lambda prompt: ReplyPlan(text=answer, chunk_chars=4, step_delay=0.01, suggestions=["more"])
    async with bridge.openai() as client:
        response_task = client.chat.completions.create(model="coze", messages=USER)
        import asyncio

        task = asyncio.ensure_future(response_task)
        async with asyncio.timeout(5):
            await sim.wait_for(lambda: any(m.author_id == sim.coze_bot_id for m in sim.messages))
        await sim.drop_gateway(resumable=False)
        response = await task
    assert sim.gateway.identifies == 2, "discord.py had to identify anew"
    assert response.choices[0].message.content == answer
    assert response.choices[0].finish_reason == "stop"
    assert (response.model_extra or {})["suggestions"] == ["more"]


async def test_stream_errors_as_content_for_chat_front_ends(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(api={"stream_errors_as_content": True})
    sim.script = lambda prompt: notice(DAILY)
    status, frames = await sse(bridge, {"model": "coze", "messages": USER})
    assert status == 200
    chunks = [json.loads(f[6:]) for f in frames[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if "choices" in c)
    assert text.startswith("[coze-discord-bridge] Coze: You have exceeded the daily limit")
    assert "retry after" in text
    assert "UTC)" in text
    assert chunks[-1]["error"]["code"] == "rate_limit_exceeded"
    assert frames[-1] == "data: [DONE]"


async def test_refused_thread_is_502_before_anything_is_posted(sim: SimulatedDiscord, bridge: Bridge) -> None:
    sim.fail_next("POST", "/channels/{channel_id}/threads", 403)
    async with bridge.http.post(
        f"{bridge.base_url}/v1/chat/completions", json={"model": "coze", "messages": USER}
    ) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "discord_send_failed"
        assert "x-should-retry" not in resp.headers
    assert sim.prompts_received == []


async def test_readiness_follows_the_gateway(sim: SimulatedDiscord, bridge: Bridge) -> None:
    # The test stands in for the connection code, the one writer of the gateway state.
    gateway = bridge.backend._gateway  # type: ignore[attr-defined]
    gateway.set(BridgeState.DEGRADED)
    async with bridge.http.get(f"{bridge.base_url}/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["status"] == "degraded"
    async with bridge.http.post(
        f"{bridge.base_url}/v1/chat/completions", json={"model": "coze", "messages": USER}
    ) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"]
    gateway.set(BridgeState.READY)
    async with bridge.http.get(f"{bridge.base_url}/readyz") as resp:
        assert resp.status == 200
    assert sim.prompts_received == []


async def test_a_failing_database_costs_no_answer(
    sim: SimulatedDiscord, bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    store = bridge.backend._conversations._store  # type: ignore[attr-defined]
    failed: list[str] = []

    def broken(name: str) -> Any:
        async def fail(*args: object) -> Any:
            failed.append(name)
            raise sqlite3.OperationalError("disk I/O error")

        return fail

    for name in ("find_conversation", "add_thread", "remember", "save_token"):
        setattr(store, name, broken(name))
    turns: list[Any] = [{"role": "user", "content": "still there?"}]
    async with bridge.openai() as client:
        first = await client.chat.completions.create(model="coze", messages=turns)
        answer = first.choices[0].message.content or ""
        assert answer.startswith('You asked: "still there?"')
        turns += [{"role": "assistant", "content": answer}, {"role": "user", "content": "and now?"}]
        second = await client.chat.completions.create(model="coze", messages=turns)
    # Unreadable, the conversation goes on in a new thread with its whole history.
    assert (second.choices[0].message.content or "").startswith("You asked:")
    before, after = sim.prompts_received
    assert before.channel_id != after.channel_id
    assert "still there?" in after.content
    assert "and now?" in after.content
    assert {"find_conversation", "add_thread", "save_token"} <= set(failed)
    assert "disk I/O error" in caplog.text, "the failed bookkeeping is logged"
