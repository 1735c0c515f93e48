"""Clients that send a request too slowly are cut off (issue 11): a trickle of header lines, an
idle connection, a trickling body, the next request on a kept-alive connection. A request that
arrived in time may take as long as its answer needs."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp

from bot.interface import Finished, PromptRequest, ReplyEvent, TextDelta
from bot.mock import MockBackend
from bridge_api.app import make_app, serving
from bridge_api.settings import load_settings
from tests.mock_bridge import DISCORD, mock_bridge

HEADERS = 0.5  # api.header_timeout_seconds here
BODY = b'{"model": "coze", "messages": [{"role": "user", "content": "hi"}]}'
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"


async def connect(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends before it closes the connection (at most 5 s)."""
    async with asyncio.timeout(5):
        return await reader.read()


async def test_an_idle_connection_is_closed_with_408() -> None:
    async with mock_bridge(header_timeout_seconds=HEADERS) as (base, backend):
        reader, writer = await connect(base)
        assert (await until_closed(reader)).startswith(b"HTTP/1.1 408 ")
        writer.close()
        assert backend.requests == []


async def test_headers_trickled_line_by_line_are_cut_off() -> None:
    async with mock_bridge(header_timeout_seconds=HEADERS) as (base, backend):
        reader, writer = await connect(base)
        writer.write(HEAD)

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for n in range(100):
                    writer.write(b"X-Slow-%d: 1\r\n" % n)  # each line well within the deadline
                    await writer.drain()
                    await asyncio.sleep(HEADERS / 5)  # sleep-ok: the client's pace is the test

        trickling = asyncio.ensure_future(trickle())
        received = await until_closed(reader)
        trickling.cancel()
        writer.close()
        assert received.startswith(b"HTTP/1.1 408 ")
        assert backend.requests == []


async def test_a_trickling_body_is_408_request_timeout() -> None:
    async with mock_bridge(body_timeout_seconds=HEADERS) as (base, backend):
        reader, writer = await connect(base)
        writer.write(HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:10])
        await writer.drain()
        async with asyncio.timeout(5):
            status = await reader.readline()
            head = await reader.readuntil(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 408 ")
        length = int(
            next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(
                b":"
            )[1]
        )
        error = json.loads(await reader.readexactly(length))["error"]
        assert error["code"] == "request_timeout"
        writer.close()
        assert backend.requests == []


async def test_the_next_request_on_a_kept_alive_connection_has_the_same_deadline() -> None:
    async with mock_bridge(header_timeout_seconds=HEADERS) as (base, backend):
        reader, writer = await connect(base)
        writer.write(HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
        async with asyncio.timeout(5):
            assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
        writer.write(HEAD)  # the next request's headers never end
        await until_closed(reader)
        writer.close()
        assert len(backend.requests) == 1


async def test_a_request_in_time_may_stream_past_the_deadlines() -> None:
    release = asyncio.Event()

    async def slow(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
        yield TextDelta("wait")
        await release.wait()
        yield Finished("stop", "wait for it")

    settings = load_settings(
        environ={}, discord=DISCORD, api={"header_timeout_seconds": HEADERS, "body_timeout_seconds": HEADERS}
    )
    app = make_app(settings, 0, backend=MockBackend(slow))
    async with serving(app) as (_, port), aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}"
        body = json.loads(BODY) | {"stream": True}
        async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            # Another connection, opened later, has run out its deadline: so has this one's.
            reader, writer = await connect(base)
            assert (await until_closed(reader)).startswith(b"HTTP/1.1 408 ")
            writer.close()
            release.set()
            text = (await resp.read()).decode()
        assert text.endswith("data: [DONE]\n\n")
        assert '"finish_reason":"stop"' in text
