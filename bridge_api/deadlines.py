"""Clients that send a request too slowly are cut off (slowloris): headers, then the body.

aiohttp has no deadline for a request's headers: a client that connects and trickles a header
line now and then holds a connection (and a file descriptor) for as long as it likes. Each
connection here gets `header_seconds` to deliver its first request's headers; later requests on
a kept-alive connection are bounded by aiohttp's keep-alive timeout, set to the same value,
which ends a connection still waiting for a request's headers. The body's deadline is applied
where a handler reads it (`read_body`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from bridge_api.errors import APIError

log = logging.getLogger(__name__)

END_OF_HEADERS = b"\r\n\r\n"
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class HeaderDeadline(asyncio.Protocol):
    """aiohttp's protocol for one connection, closed unless the first headers end in time."""

    def __init__(self, inner: asyncio.Protocol, seconds: float) -> None:
        self._inner = inner
        self._seconds = seconds
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._tail = b""  # the end of what came so far: the blank line may straddle two reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._seconds, self._expire)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if END_OF_HEADERS in seen:
                self._disarm()
            else:
                self._tail = seen[-(len(END_OF_HEADERS) - 1) :]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._tail = b""

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            log.debug("closing a connection whose request headers took over %gs", self._seconds)
            self._transport.write(TIMED_OUT)
            self._transport.close()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections have a deadline for their request headers."""

    __slots__ = ("_header_seconds", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, header_seconds: float) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._header_seconds = header_seconds

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        factory: Callable[[], asyncio.Protocol] = lambda: HeaderDeadline(server(), self._header_seconds)  # noqa: E731
        self._server = await asyncio.get_running_loop().create_server(factory, self._host, self._port)


async def read_body(request: web.Request, seconds: float) -> bytes:
    """The whole body, or 408 when it does not arrive within `seconds` (aiohttp's 413 past
    client_max_size)."""
    if request.content.is_eof():
        return await request.read()  # it came with the headers: no timer to set and cancel
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        raise APIError(
            408, f"The request body did not arrive within {seconds:g}s.", code="request_timeout"
        ) from None
