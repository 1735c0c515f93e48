"""The HTTP API against an in-memory backend: real openai SDK and raw HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import aiohttp
import openai
import pytest

from bot.interface import (
    Finished,
    Idle,
    NotReady,
    PromptRequest,
    ReplyEvent,
    ReplyTimeout,
    SendFailed,
    TextDelta,
)
from bot.mock import MockBackend
from bot.status import BridgeState
from bridge_api.app import make_app, serving
from bridge_api.settings import load_settings

DISCORD = {"bot_token": "x", "guild_id": 1, "coze_bot_id": 2, "channel_id": 3}


def answer(*pieces: str, suggestions: tuple[str, ...] = ("More?",)) -> Callable[[PromptRequest], Any]:
    async def handler(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
        for piece in pieces:
            yield TextDelta(piece)
        yield Finished("stop", "".join(pieces), suggestions)

    return handler


class Server:
    def __init__(self, backend: MockBackend, base: str, http: aiohttp.ClientSession) -> None:
        self.backend = backend
        self.base = base
        self.http = http

    def sdk(self, key: str = "k") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0)

    async def post(self, body: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.http.post(self.base + "/v1/chat/completions", data=data, **kwargs)


@pytest.fixture
async def serve() -> AsyncGenerator[Callable[..., Any], None]:
    async with contextlib.AsyncExitStack() as stack:

        async def start(handler: Callable[[PromptRequest], Any], **api: Any) -> Server:
            backend = MockBackend(handler)
            settings = load_settings(discord=DISCORD, api=api)
            _, port = await stack.enter_async_context(serving(make_app(settings, 0, backend=backend)))
            http = await stack.enter_async_context(aiohttp.ClientSession())
            return Server(backend, f"http://127.0.0.1:{port}", http)

        yield start


USER = [{"role": "user", "content": "hi"}]


async def test_sdk_stream_with_usage(serve: Callable[..., Any]) -> None:
    server: Server = await serve(answer("Hel", "lo"))
    async with server.sdk() as client:
        stream = await client.chat.completions.create(
            model="coze", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


async def test_sdk_plain_completion(serve: Callable[..., Any]) -> None:
    server: Server = await serve(answer("Hello", " there", suggestions=("Ask again",)))
    async with server.sdk() as client:
        response = await client.chat.completions.create(model="coze", messages=USER)
    assert response.choices[0].message.content == "Hello there"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert response.usage.prompt_tokens > 0
    assert (response.model_extra or {})["suggestions"] == ["Ask again"]
    assert server.backend.requests[0].turns[0].content == "hi"


async def test_a_plain_request_waits_for_a_token_no_longer_than_for_the_first_reply(
    serve: Callable[..., Any],
) -> None:
    server: Server = await serve(answer("ok"))
    for stream in (False, True):
        resp = await server.post({"model": "coze", "messages": USER, "stream": stream})
        await resp.read()
        assert resp.status == 200
    async with server.http.post(server.base + "/v1/images/generations", json={"prompt": "a cat"}) as resp:
        await resp.read()  # no image in "ok": 502, after the backend was asked
    plain, streamed, image = (request.limits for request in server.backend.requests)
    assert plain.max_queue_seconds == 60.0, "completion.first_reply_timeout"
    assert image.max_queue_seconds == 60.0
    assert streamed.max_queue_seconds is None, "a stream hears ': queued' while it waits"


async def test_content_parts_and_history_reach_the_backend(serve: Callable[..., Any]) -> None:
    server: Server = await serve(answer("ok"))
    messages = [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}]},
    ]
    resp = await server.post({"model": "coze", "messages": messages, "temperature": 0.3, "top_p": 1})
    assert resp.status == 200
    turns = server.backend.requests[0].turns
    assert [(t.role, t.content) for t in turns] == [("system", "Be brief"), ("user", "part one\ntwo")]


@pytest.mark.parametrize(
    ("stream", "expect_sse"), [("true", True), ("false", False), (True, True), (False, False), ("TRUE", True)]
)
async def test_stream_flag_as_bool_or_string(
    serve: Callable[..., Any], stream: Any, expect_sse: bool
) -> None:
    server: Server = await serve(answer("x"))
    resp = await server.post({"model": "coze", "messages": USER, "stream": stream})
    await resp.read()
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream") is expect_sse


async def test_raw_sse_frames_headers_first_and_pings(serve: Callable[..., Any]) -> None:
    go = asyncio.Event()

    async def handler(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
        await go.wait()
        yield Idle()
        yield TextDelta('quote " and\nnewline')
        yield Finished("stop", 'quote " and\nnewline')

    server: Server = await serve(handler)
    resp = await server.post({"model": "coze", "messages": USER, "stream": True})
    # Headers arrived while the backend had produced nothing yet.
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert resp.headers["x-request-id"]
    go.set()
    raw = (await resp.read()).decode()
    frames = raw.split("\n\n")
    assert frames[-1] == ""
    assert ": ping" in frames
    data = [f for f in frames if f.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    chunks = [json.loads(f[6:]) for f in data[:-1]]
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert chunks[1]["choices"][0]["delta"] == {"content": 'quote " and\nnewline'}


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (SendFailed("Discord said no", posted=False), 502, "discord_send_failed"),
        (ReplyTimeout("Coze is silent", posted=True), 504, "timeout"),
    ],
)
async def test_backend_errors_in_band_for_streams(
    serve: Callable[..., Any], error: Exception, status: int, code: str
) -> None:
    async def handler(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
        yield TextDelta("partial ")
        raise error

    server: Server = await serve(handler)
    resp = await server.post({"model": "coze", "messages": USER, "stream": True})
    frames = [f for f in (await resp.read()).decode().split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    assert json.loads(frames[-2][6:])["error"]["code"] == code
    async with server.sdk() as client:
        stream = await client.chat.completions.create(model="coze", messages=USER, stream=True)
        with pytest.raises(openai.APIError, match=str(error)):
            async for _ in stream:
                pass


async def test_backend_errors_as_statuses_for_plain_requests(serve: Callable[..., Any]) -> None:
    async def handler(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
        raise ReplyTimeout("Coze is silent", posted=True)
        yield TextDelta("unreachable")

    server: Server = await serve(handler)
    async with server.sdk() as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="coze", messages=USER)
    assert caught.value.status_code == 504
    assert caught.value.response.headers["x-should-retry"] == "false"
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "timeout"


async def test_not_ready_is_503_with_retry_after_and_nothing_posted(serve: Callable[..., Any]) -> None:
    server: Server = await serve(answer("x"))
    server.backend.state = BridgeState.CONNECTING
    for stream in (True, False):
        resp = await server.post({"model": "coze", "messages": USER, "stream": stream})
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "5"
        assert (await resp.json())["error"]["code"] == "gateway_not_ready"
    assert server.backend.requests == []
    async with server.http.get(server.base + "/readyz") as ready:
        assert ready.status == 503
        assert "Retry-After" in ready.headers
    server.backend.state = BridgeState.READY
    async with server.http.get(server.base + "/readyz") as ready:
        assert ready.status == 200


async def test_backend_raising_not_ready_maps_to_503(serve: Callable[..., Any]) -> None:
    async def handler(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
        raise NotReady("gateway lost", retry_after=7)
        yield TextDelta("unreachable")

    server: Server = await serve(handler)
    resp = await server.post({"model": "coze", "messages": USER})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "7"
    assert "x-should-retry" not in resp.headers


async def test_client_disconnect_closes_the_backend_iterator(serve: Callable[..., Any]) -> None:
    started, released = asyncio.Event(), asyncio.Event()

    async def handler(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
        try:
            yield TextDelta("first")
            started.set()
            while True:
                yield Idle()
                await asyncio.Event().wait()
        finally:
            released.set()

    server: Server = await serve(handler, ping_seconds=0.05)
    resp = await server.post({"model": "coze", "messages": USER, "stream": True})
    async with asyncio.timeout(5):
        await started.wait()
    resp.close()
    async with asyncio.timeout(5):
        await released.wait()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"\xff\xfe", None),
        (b"[1, 2]", None),
        ({"messages": USER}, "model"),
        ({"model": "coze"}, "messages"),
        ({"model": "coze", "messages": []}, "messages"),
        ({"model": "coze", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "coze", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "coze", "messages": USER, "stream": "maybe"}, "stream"),
        (
            {"model": "coze", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].image_url",
        ),
    ],
)
async def test_bad_requests_are_400_naming_the_field(
    serve: Callable[..., Any], body: Any, param: str | None
) -> None:
    server: Server = await serve(answer("x"))
    resp = await server.post(body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert error["param"] == param
    assert (await server.post({"model": "coze", "messages": USER})).status == 200


async def test_unknown_model_route_method_and_size(serve: Callable[..., Any]) -> None:
    server: Server = await serve(answer("x"), max_body_bytes=2048)
    async with server.sdk() as client:
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-4", messages=USER)
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("gpt-4")
        assert (await client.models.retrieve("coze")).id == "coze"
    cases = [
        (server.http.get(server.base + "/v1/nowhere"), 404, "unknown_url"),
        (server.http.get(server.base + "/v1/chat/completions"), 405, "method_not_allowed"),
        (
            server.post({"model": "coze", "messages": [{"role": "user", "content": "x" * 5000}]}),
            413,
            "request_too_large",
        ),
    ]
    for call, status, code in cases:
        resp = await call
        assert resp.status == status
        assert (await resp.json())["error"]["code"] == code
    async with server.http.get(server.base + "/models") as models:
        assert (await models.json())["data"][0]["id"] == "coze"


async def test_api_keys(serve: Callable[..., Any]) -> None:
    server: Server = await serve(answer("x"), keys=["sk-right", "sk-other"])
    async with server.sdk("sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="coze", messages=USER)
    for key in ("sk-right", "sk-other"):
        async with server.sdk(key) as client:
            response = await client.chat.completions.create(model="coze", messages=USER)
            assert response.choices[0].message.content == "x"
    resp = await server.post({"model": "coze", "messages": USER})
    assert resp.status == 401
    body = await resp.text()
    assert "sk-right" not in body
    async with server.http.get(server.base + "/healthz") as health:
        assert health.status == 200


async def test_cors_preflight_without_auth_and_request_ids(serve: Callable[..., Any]) -> None:
    server: Server = await serve(answer("x"), keys=["sk-right"])
    headers = {
        "Origin": "http://localhost:3210",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
    }
    async with server.http.options(server.base + "/v1/chat/completions", headers=headers) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert resp.headers["Access-Control-Allow-Headers"] == headers["Access-Control-Request-Headers"]
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    resp = await server.post({"model": "coze", "messages": USER}, headers={"X-Request-Id": "my-trace-42"})
    assert resp.headers["x-request-id"] == "my-trace-42"
    resp = await server.post(
        {"model": "coze", "messages": USER}, headers={"X-Request-Id": "bad id\twith junk"}
    )
    assert resp.headers["x-request-id"].startswith("req_")
