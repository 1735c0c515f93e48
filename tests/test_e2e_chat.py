"""The whole path: openai SDK / raw SSE -> aiohttp bridge -> discord.py -> simulated Discord -> Coze."""

from __future__ import annotations

import json
import logging

import openai
import pytest

from simdiscord import ReplyPlan, SimulatedDiscord
from tests.conftest import Bridge, BridgeFactory

SUGGESTIONS = ["Tell me more", "Give an example", "Why is that?"]


def plan(text: str, **kwargs: object) -> ReplyPlan:
    defaults: dict[str, object] = {"chunk_chars": 7, "step_delay": 0.005, "suggestions": SUGGESTIONS}
    return ReplyPlan(text=text, **(defaults | kwargs))  # type: ignore[arg-type]


async def stream_text(bridge: Bridge, content: str) -> tuple[list[str], str | None]:
    async with bridge.openai() as client:
        stream = await client.chat.completions.create(
            model="coze", messages=[{"role": "user", "content": content}], stream=True
        )
        deltas: list[str] = []
        finish = None
        async for chunk in stream:
            choice = chunk.choices[0]
            if choice.delta.content:
                deltas.append(choice.delta.content)
            finish = choice.finish_reason or finish
    return deltas, finish


async def test_stream_through_sdk_gives_the_coze_answer(sim: SimulatedDiscord, bridge: Bridge) -> None:
    answer = "Paris is the capital of France. It sits on the Seine."
    sim.script = lambda prompt: plan(answer)

    deltas, finish = await stream_text(bridge, "What is the capital of France?")

    assert "".join(deltas) == answer
    assert len(deltas) > 1, "the answer should stream in several deltas"
    assert finish == "stop"
    prompt = sim.prompts_received[-1]
    assert "What is the capital of France?" in prompt.content
    assert not prompt.author_is_bot, "prompts must be posted with a user-account token"


async def test_non_stream_gives_content_usage_and_suggestions(sim: SimulatedDiscord, bridge: Bridge) -> None:
    answer = "Water boils at 100 degrees Celsius at sea level."
    sim.script = lambda prompt: plan(answer)
    async with bridge.openai() as client:
        response = await client.chat.completions.create(
            model="coze", messages=[{"role": "user", "content": "When does water boil?"}]
        )
    assert response.choices[0].message.content == answer
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert response.usage.completion_tokens > 0
    assert (response.model_extra or {})["suggestions"] == SUGGESTIONS


async def test_reply_without_marker_ends_after_quiet_period(sim: SimulatedDiscord, bridge: Bridge) -> None:
    answer = "Auto-suggest is off for this bot, so no buttons will come."
    sim.script = lambda prompt: plan(answer, marker=False)
    deltas, finish = await stream_text(bridge, "hello")
    assert "".join(deltas) == answer
    assert finish == "stop"


async def test_followups_after_marker_stay_out_of_the_answer(sim: SimulatedDiscord, bridge: Bridge) -> None:
    answer = "Here is the answer."
    sim.script = lambda prompt: plan(answer, followups=["Follow-up one?", "Follow-up two?"])
    async with bridge.openai() as client:
        response = await client.chat.completions.create(
            model="coze", messages=[{"role": "user", "content": "question"}]
        )
    content = response.choices[0].message.content or ""
    assert content == answer
    for suggestion in [*SUGGESTIONS, "Follow-up one?"]:
        assert suggestion not in content


async def test_long_answer_over_several_messages_is_joined(sim: SimulatedDiscord, bridge: Bridge) -> None:
    lines = [f"Line {i}: " + "lorem ipsum dolor sit amet " * 3 for i in range(60)]
    answer = "\n".join(lines)
    assert len(answer) > 4000
    sim.script = lambda prompt: plan(answer, chunk_chars=400, step_delay=0.002)
    deltas, finish = await stream_text(bridge, "write a lot")
    assert finish == "stop"
    assert "".join(deltas) == answer
    coze_messages = [m for m in sim.messages if m.author_id == sim.coze_bot_id]
    assert len(coze_messages) >= 3


async def test_long_prompt_is_split_and_coze_answers_the_last_part(
    sim: SimulatedDiscord, bridge: Bridge
) -> None:
    sim.script = lambda prompt: plan("ok")
    paragraph = "This sentence is part of a very long prompt. " * 20
    long_prompt = "\n".join(f"{i} {paragraph}" for i in range(6))
    assert len(long_prompt) > 5000
    deltas, _ = await stream_text(bridge, long_prompt)
    assert "".join(deltas) == "ok"
    posted = [m for m in sim.messages if m.author_id != sim.coze_bot_id and m.channel_id != sim.channel_id]
    assert len(posted) >= 3
    assert all(len(m.content) <= 2000 for m in posted)
    mention = f"<@{sim.coze_bot_id}>"
    assert mention in posted[-1].content
    assert all(mention not in m.content for m in posted[:-1])


async def test_concurrent_requests_get_their_own_answers(sim: SimulatedDiscord, bridge: Bridge) -> None:
    import asyncio

    sim.script = lambda prompt: plan(f"Answer to [{prompt.content.strip()}] only.")
    questions = [f"question number {i}" for i in range(8)]
    results = await asyncio.gather(*(stream_text(bridge, q) for q in questions))
    for question, (deltas, finish) in zip(questions, results, strict=True):
        assert "".join(deltas) == f"Answer to [{question}] only."
        assert finish == "stop"


async def test_raw_sse_frames(sim: SimulatedDiscord, bridge: Bridge) -> None:
    sim.script = lambda prompt: plan("One two three four five.")
    body = {"model": "coze", "stream": "true", "messages": [{"role": "user", "content": "count"}]}
    async with bridge.http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    frames = [frame for frame in raw.split("\n\n") if frame and not frame.startswith(":")]
    assert all(frame.startswith("data: ") for frame in frames)
    assert frames[-1] == "data: [DONE]"
    chunks = [json.loads(frame[len("data: ") :]) for frame in frames[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {(c["id"], c["created"], c["model"]) for c in chunks} == {
        (chunks[0]["id"], chunks[0]["created"], "coze")
    }
    assert all("finish_reason" in c["choices"][0] for c in chunks)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "One two three four five."


async def test_string_false_means_non_stream(sim: SimulatedDiscord, bridge: Bridge) -> None:
    sim.script = lambda prompt: plan("plain")
    body = {"model": "coze", "stream": "false", "messages": [{"role": "user", "content": "hi"}]}
    async with bridge.http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"] == "plain"


async def test_silent_coze_gives_timeout(sim: SimulatedDiscord, start_bridge: BridgeFactory) -> None:
    bridge: Bridge = await start_bridge(completion={"first_reply_timeout": 0.5})
    sim.script = lambda prompt: plan("", silent=True)
    async with bridge.openai() as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="coze", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 504
    assert caught.value.response.headers.get("x-should-retry") == "false"


async def test_max_reply_seconds_cuts_with_length(sim: SimulatedDiscord, start_bridge: BridgeFactory) -> None:
    bridge: Bridge = await start_bridge(completion={"max_reply_seconds": 0.6, "quiet_seconds": 5})
    sim.script = lambda prompt: plan("word " * 400, chunk_chars=5, step_delay=0.01)
    deltas, finish = await stream_text(bridge, "go on forever")
    assert finish == "length"
    assert deltas, "the text so far is kept"


async def test_without_user_tokens_the_bot_posts_and_warns(
    sim: SimulatedDiscord, start_bridge: BridgeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    sim.coze_ignores_bots = False
    sim.script = lambda prompt: plan("bot-posted prompt answered")
    bridge: Bridge = await start_bridge(discord={"user_tokens": []})
    assert any("does not answer prompts written by bot accounts" in r.message for r in caplog.records)
    deltas, _ = await stream_text(bridge, "hi")
    assert "".join(deltas) == "bot-posted prompt answered"
    assert sim.prompts_received[-1].author_is_bot


async def test_readyz_and_models(bridge: Bridge) -> None:
    async with bridge.http.get(f"{bridge.base_url}/readyz") as resp:
        assert resp.status == 200
    async with bridge.openai() as client:
        models = await client.models.list()
    assert [m.id for m in models.data] == ["coze", "bridge-health"]


async def test_other_traffic_in_the_server_is_ignored(sim: SimulatedDiscord, bridge: Bridge) -> None:
    import asyncio

    import aiohttp

    mention = f"<@{sim.coze_bot_id}>"
    human = sim.world.human.token
    noise_started = asyncio.Event()

    def script(prompt: object) -> ReplyPlan:
        content = getattr(prompt, "content", "")
        if content.startswith("noise"):
            return plan("NOISE ANSWER for someone else", chunk_chars=3, step_delay=0.003)
        return plan("The real answer, streamed slowly.", chunk_chars=3, step_delay=0.01)

    sim.script = script

    async def chatter() -> None:
        async with asyncio.timeout(5):
            await sim.wait_for(lambda: bool(sim.prompts_received))
        thread_id = sim.prompts_received[0].channel_id
        async with aiohttp.ClientSession() as http:
            for channel, content in [
                (thread_id, "a person chatting in the request's thread"),
                (sim.channel_id, f"{mention} noise from someone else in the main channel"),
            ]:
                async with http.post(
                    f"{sim.api_base}/channels/{channel}/messages",
                    json={"content": content},
                    headers={"Authorization": human},
                ) as resp:
                    assert resp.status == 200
        noise_started.set()

    chatter_task = asyncio.create_task(chatter())
    deltas, finish = await stream_text(bridge, "the question")
    await chatter_task
    assert noise_started.is_set()
    assert "".join(deltas) == "The real answer, streamed slowly."
    assert finish == "stop"
    async with asyncio.timeout(5):
        await sim.wait_for(
            lambda: any(
                m.content.startswith("NOISE ANSWER for someone else") and m.components for m in sim.messages
            )
        )


async def test_tokens_never_reach_the_logs(
    sim: SimulatedDiscord, start_bridge: BridgeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api_key = "sk-live-4f9a1c0e7b2d48e6a5c3f1b0d9e8a7c6"
    sim.script = lambda prompt: plan("fine")
    bridge: Bridge = await start_bridge(api={"keys": [api_key]})
    async with openai.AsyncOpenAI(base_url=bridge.base_url + "/v1", api_key=api_key, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="coze", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "fine"
        sim.fail_next("POST", "/channels/{channel_id}/messages", 403)
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="coze", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    wrong_key = api_key[:-4] + "0000"
    async with openai.AsyncOpenAI(
        base_url=bridge.base_url + "/v1", api_key=wrong_key, max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError) as denied:
            await client.models.list()
    text = caplog.text + str(caught.value.body) + str(denied.value.body)
    assert len(caplog.records) > 20, "the run should have logged plenty at DEBUG"
    for secret in [sim.bot_token, *sim.user_tokens, api_key, wrong_key]:
        assert secret not in text
        assert secret.split(".")[-1][-12:] not in text


async def test_reply_that_beats_the_prompts_own_ack_is_kept(sim: SimulatedDiscord, bridge: Bridge) -> None:
    """Under load the gateway can bring Coze's whole reply before REST returns the prompt's id."""
    sim.ack_after_reply()
    sim.script = lambda prompt: ReplyPlan(text="all in one message", chunk_chars=100, suggestions=["more"])
    deltas, finish = await stream_text(bridge, "hello")
    assert "".join(deltas) == "all in one message"
    assert finish == "stop"


async def test_posting_is_bounded_and_every_request_still_answered(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    import asyncio

    bridge = await start_bridge(discord={"max_concurrent_posts": 2})
    sim.ack_after_reply()  # each post stays open until Coze has answered it
    sim.script = lambda prompt: plan(f"Answer to [{prompt.content.strip()}] only.")
    questions = [f"question number {i}" for i in range(6)]
    results = await asyncio.gather(*(stream_text(bridge, q) for q in questions))
    for question, (deltas, _) in zip(questions, results, strict=True):
        assert "".join(deltas) == f"Answer to [{question}] only."
    assert sim.rest.peak_posts_in_flight == 2
