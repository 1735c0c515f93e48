"""Whatever a client sends, the answer is a valid completion or a well-formed OpenAI error."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.interface import Finished, PromptRequest, ReplyEvent, TextDelta
from bot.mock import MockBackend
from bridge_api.app import make_app, serving
from bridge_api.settings import load_settings

ALLOWED = {200, 400, 404, 413}

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
garbage = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
roles = st.sampled_from(["user", "system", "assistant", "developer", "tool", "wizard", "", "USER"])
contents = (
    st.text(max_size=200)
    | st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "audio"]), "text": garbage}),
        max_size=3,
    )
    | garbage
)
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": contents}), max_size=5) | garbage
bodies = (
    st.fixed_dictionaries(
        {"model": st.sampled_from(["coze", "gpt-4", ""]) | garbage, "messages": messages},
        optional={
            "stream": st.sampled_from([True, False, "true", "false", "yes", 1, None]),
            "stream_options": garbage,
        },
    )
    | garbage
)


async def echo(request: PromptRequest) -> AsyncGenerator[ReplyEvent, None]:
    text = f"{len(request.turns)} turns"
    yield TextDelta(text)
    yield Finished("stop", text)


@pytest.fixture
async def base_url() -> AsyncGenerator[str, None]:
    settings_ = load_settings(discord={"bot_token": "x", "guild_id": 1, "coze_bot_id": 2, "channel_id": 3})
    async with serving(make_app(settings_, 0, backend=MockBackend(echo))) as (_, port):
        yield f"http://127.0.0.1:{port}"


async def check(http: aiohttp.ClientSession, base_url: str, payload: bytes) -> None:
    async with http.post(f"{base_url}/v1/chat/completions", data=payload) as resp:
        assert resp.status in ALLOWED, await resp.text()
        body = await resp.read()
        if resp.status != 200:
            error = json.loads(body)["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert isinstance(error["message"], str)
            assert error["message"]
        elif resp.headers["Content-Type"].startswith("text/event-stream"):
            assert body.endswith(b"data: [DONE]\n\n")
        else:
            assert json.loads(body)["object"] == "chat.completion"


@given(body=bodies)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_any_json_body(base_url: str, body: Any) -> None:
    async with aiohttp.ClientSession() as http:
        await check(http, base_url, json.dumps(body).encode())


@given(raw=st.binary(max_size=300))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_any_bytes(base_url: str, raw: bytes) -> None:
    async with aiohttp.ClientSession() as http:
        await check(http, base_url, raw)


async def test_extremes_then_still_serving(base_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        many = {"model": "coze", "messages": [{"role": "user", "content": "hi"}] * 10_000}
        await check(http, base_url, json.dumps(many).encode())
        huge = {"model": "coze", "messages": [{"role": "user", "content": "x" * 2_000_000}]}
        async with http.post(
            f"{base_url}/v1/chat/completions", data=io.BytesIO(json.dumps(huge).encode())
        ) as resp:
            assert resp.status == 413
        deep = json.dumps({"model": "coze", "messages": [[[[[[[[[[[]]]]]]]]]]]})
        await check(http, base_url, deep.encode())
        empty = {"model": "coze", "messages": [{"role": "user"}]}
        await check(http, base_url, json.dumps(empty).encode())
        ok = {"model": "coze", "messages": [{"role": "user", "content": "still here?"}]}
        async with http.post(f"{base_url}/v1/chat/completions", json=ok) as resp:
            assert resp.status == 200
