"""The guarded client: real HTTP servers on loopback as fetch targets, and a fuzzed address check."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ipaddress
import os
import socket
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from bridge_api.app import serving
from bridge_api.errors import APIError
from bridge_api.image_input import load_images
from bridge_api.outbound import (
    Budget,
    BudgetExceeded,
    FetchFailed,
    GuardedResolver,
    Outbound,
    TooLarge,
    check_url,
    is_refused,
)
from simdiscord.png import solid_png

MiB = 1024 * 1024
PNG = solid_png(8, 8, (0, 128, 255))


def noisy_png(size: int) -> bytes:
    """A real PNG of about `size` bytes: random pixels do not compress."""
    side = int((size / 3) ** 0.5) + 1

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + os.urandom(side * 3) for _ in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 0))
        + chunk(b"IEND", b"")
    )


def fixed(**response: Any) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(**response)

    return handler


class Target:
    """A loopback HTTP server with the routes the tests fetch; it counts what reached it."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.slow_arrived = asyncio.Condition()
        self.slow_count = 0
        self.release = asyncio.Event()
        self.big = noisy_png(MiB)
        self.app = web.Application()
        self.app.middlewares.append(self.count)
        self.app.router.add_get("/png", fixed(body=PNG, content_type="image/png"))
        self.app.router.add_get("/big", fixed(body=self.big, content_type="image/png"))
        self.app.router.add_get("/huge", self.huge)
        self.app.router.add_get("/bomb", self.bomb)
        self.app.router.add_get("/gzpng", self.gzpng)
        self.app.router.add_get("/text", fixed(text="secret"))
        self.app.router.add_get("/missing", fixed(status=404))
        self.app.router.add_get("/hop/{n}", self.hop)
        self.app.router.add_get("/away", self.away)
        self.app.router.add_get("/slow", self.slow)
        self.app.router.add_get("/dribble", self.dribble)
        self.port = 0

    @web.middleware
    async def count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.hits.append(request.path)
        response: web.StreamResponse = await handler(request)
        return response

    async def huge(self, request: web.Request) -> web.StreamResponse:
        # Chunked, so no Content-Length gives the size away before reading.
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(PNG)
        for _ in range(9):
            await response.write(bytes(MiB))
        await response.write_eof()
        return response

    async def bomb(self, request: web.Request) -> web.Response:
        body = gzip.compress(PNG + bytes(64 * MiB), compresslevel=9)
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "image/png"})

    async def gzpng(self, request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(self.big), headers={"Content-Encoding": "gzip"})

    async def hop(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(body=PNG, content_type="image/png")
        raise web.HTTPFound(f"/hop/{n - 1}")

    async def away(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def slow(self, request: web.Request) -> web.Response:
        async with self.slow_arrived:
            self.slow_count += 1
            self.slow_arrived.notify_all()
        await self.release.wait()
        return web.Response(body=PNG)

    async def dribble(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(PNG) + 10)})
        await response.prepare(request)
        await response.write(PNG[:10])
        await self.release.wait()
        return response

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@contextlib.asynccontextmanager
async def running(target: Target, host: str = "127.0.0.1") -> AsyncIterator[Target]:
    async with serving(target.app, host=host) as (_, port):
        target.port = port
        try:
            yield target
        finally:
            target.release.set()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    async with running(Target()) as served:
        yield served


@pytest.fixture
async def lan() -> AsyncIterator[Outbound]:
    """A client with the address check lifted, as `images.allow_private_networks = true` does."""
    async with Outbound(refused=None, total_timeout=5.0) as client:
        yield client


@pytest.fixture
async def guarded() -> AsyncIterator[Outbound]:
    async with Outbound() as client:
        yield client


async def test_a_lan_fetch_reads_the_whole_body(target: Target, lan: Outbound) -> None:
    assert await lan.fetch(target.url("/png"), MiB) == PNG
    assert await lan.fetch(target.url("/big"), 8 * MiB) == target.big, "1 MiB arrives whole"


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "localhost", "2130706433", "0x7f.1", "127.1"],
)
async def test_loopback_in_any_spelling_is_refused_unfetched(
    target: Target, guarded: Outbound, host: str
) -> None:
    with pytest.raises(FetchFailed):
        await guarded.fetch(target.url("/png", host), MiB)
    assert target.hits == []


@pytest.mark.parametrize("url", ["ftp://example.com/x.png", "file:///etc/passwd", "http:///nohost"])
async def test_only_http_urls(guarded: Outbound, url: str) -> None:
    with pytest.raises(FetchFailed, match="not an http"):
        await guarded.fetch(url, MiB)


async def test_each_redirect_hop_is_checked(target: Target) -> None:
    # Only 127.0.0.1 counts as public here; the redirect points at another loopback address.
    async with running(Target(), host="127.0.0.2") as inside:
        hop = target.url(f"/away?to={inside.url('/png', '127.0.0.2')}")
        async with Outbound(refused=lambda ip: str(ip) != "127.0.0.1") as client:
            with pytest.raises(FetchFailed, match=r"refused address 127\.0\.0\.2"):
                await client.fetch(hop, MiB)
        assert inside.hits == []
        async with Outbound(refused=None) as client:
            assert await client.fetch(hop, MiB) == PNG, "the same redirect is followed on a LAN"


async def test_at_most_three_redirects(target: Target, lan: Outbound) -> None:
    assert await lan.fetch(target.url("/hop/3"), MiB) == PNG
    with pytest.raises(FetchFailed, match="more than 3 redirects"):
        await lan.fetch(target.url("/hop/4"), MiB)
    assert "/hop/0" not in target.hits[4:]


@pytest.mark.parametrize("path", ["/slow", "/dribble"])
async def test_a_slow_host_times_out(target: Target, path: str) -> None:
    async with Outbound(refused=None, total_timeout=0.3) as client:
        with pytest.raises(FetchFailed, match="timed out"):
            await client.fetch(target.url(path), MiB)


async def test_a_slow_host_holds_only_its_share_of_the_pool(target: Target) -> None:
    async with running(Target()) as other, Outbound(refused=None, limit=3, limit_per_host=2) as client:
        stuck = [asyncio.create_task(client.fetch(target.url("/slow"), MiB)) for _ in range(3)]
        async with target.slow_arrived:
            await target.slow_arrived.wait_for(lambda: target.slow_count >= 2)
        async with asyncio.timeout(5):
            assert await client.fetch(other.url("/png"), MiB) == PNG
        assert target.slow_count == 2, "the third slow fetch waits for its host's share"
        target.release.set()
        assert await asyncio.gather(*stuck) == [PNG] * 3


async def test_sizes_are_counted_while_reading(target: Target, lan: Outbound) -> None:
    with pytest.raises(TooLarge):
        await lan.fetch(target.url("/huge"), 8 * MiB)
    with pytest.raises(TooLarge):
        await lan.fetch(target.url("/big"), MiB // 2)


async def test_compressed_bodies_are_bounded_by_their_decoded_size(target: Target, lan: Outbound) -> None:
    assert await lan.fetch(target.url("/gzpng"), 2 * MiB) == target.big
    with pytest.raises(TooLarge):
        await lan.fetch(target.url("/bomb"), MiB)


async def test_fetches_sharing_a_budget(target: Target, lan: Outbound) -> None:
    budget = Budget(MiB + MiB // 2)
    assert await lan.fetch(target.url("/big"), 2 * MiB, budget) == target.big
    with pytest.raises(BudgetExceeded):
        await lan.fetch(target.url("/big"), 2 * MiB, budget)


async def test_every_unfetchable_image_reads_the_same(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}/x.png"
    messages = []
    async with Outbound() as guarded, Outbound(refused=None, total_timeout=0.3) as lan:
        cases = [(guarded, target.url("/png"))] + [
            (lan, url) for url in [target.url("/missing"), target.url("/slow"), target.url("/text"), nobody]
        ]
        for client, url in cases:
            with pytest.raises(APIError) as refused:
                await load_images(client, [("messages[0].content[1].image_url", url)], MiB, total=MiB)
            assert refused.value.status == 400
            assert refused.value.code == "invalid_image"
            assert refused.value.param == "messages[0].content[1].image_url"
            messages.append(refused.value.message)
    assert messages == [messages[0]] * 5, "no port or status scanner"
    assert "could not be fetched as an image" in messages[0]
    assert "HTTP 404" in caplog.text, "the log has the detail"


async def test_a_prompts_images_share_the_upload_limit(target: Target) -> None:
    parts = [(f"messages[0].content[{n}].image_url", target.url("/big")) for n in range(2)]
    async with Outbound(refused=None) as client:
        with pytest.raises(APIError) as refused:
            await load_images(client, parts, 2 * MiB, total=MiB + MiB // 2)
        assert (refused.value.code, refused.value.param) == ("images_too_large", "messages")
        assert len(await load_images(client, parts, 2 * MiB, total=3 * MiB)) == 2


# The address check, fuzzed: pure and fast.

REFUSED_V4 = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
]
REFUSED_V6 = ["::1/128", "::/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "2001:db8::/32"]

refused_v4 = st.sampled_from(REFUSED_V4).flatmap(lambda net: st.ip_addresses(v=4, network=net))
refused_v6 = st.sampled_from(REFUSED_V6).flatmap(lambda net: st.ip_addresses(v=6, network=net))
public_v4 = st.ip_addresses(v=4).filter(
    lambda ip: not any(ip in ipaddress.ip_network(net) for net in REFUSED_V4) and ip.is_global
)


def forms(ip: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """The IPv6 spellings that stand for an IPv4 address: mapped, compatible, 6to4, NAT64."""
    value = int(ip)
    return [
        ipaddress.IPv6Address(0xFFFF << 32 | value),
        ipaddress.IPv6Address(value),
        ipaddress.IPv6Address(0x2002 << 112 | value << 80),
        ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | value),
    ]


@given(refused_v4)
def test_refused_ipv4_in_every_spelling(ip: ipaddress.IPv4Address) -> None:
    assert is_refused(ip)
    for form in forms(ip):
        if int(form) > 1:  # :: and ::1 are refused as themselves
            assert is_refused(form), form
            with pytest.raises(FetchFailed):
                check_url(URL(f"http://[{form}]:8080/x.png"), is_refused)
    with pytest.raises(FetchFailed):
        check_url(URL(f"https://{ip}/x.png"), is_refused)


@given(refused_v6)
def test_refused_ipv6(ip: ipaddress.IPv6Address) -> None:
    assert is_refused(ip)
    with pytest.raises(FetchFailed):
        check_url(URL(f"http://[{ip}]/"), is_refused)


@given(public_v4)
def test_public_addresses_pass(ip: ipaddress.IPv4Address) -> None:
    assert not is_refused(ip)
    assert not is_refused(forms(ip)[0]), "an IPv4-mapped public address is public"
    check_url(URL(f"http://{ip}/x.png"), is_refused)
    check_url(URL(f"http://{ip}/x.png"), None)


class FakeResolver(AbstractResolver):
    def __init__(self, answers: list[str]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0}
            for a in self.answers
        ]

    async def close(self) -> None:
        pass


hostnames = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}\Z")


@given(hostnames, st.lists(st.one_of(refused_v4, refused_v6, public_v4), min_size=1, max_size=6))
async def test_the_resolver_gives_only_allowed_addresses(host: str, answers: list[Any]) -> None:
    check_url(URL(f"http://{host}/x.png"), is_refused)  # hostnames are left to the resolver
    resolver = GuardedResolver(FakeResolver([str(a) for a in answers]), is_refused)
    allowed = [str(a) for a in answers if not is_refused(a)]
    if allowed:
        assert [r["host"] for r in await resolver.resolve(host, 443)] == allowed
    else:
        with pytest.raises(OSError, match="refused addresses"):
            await resolver.resolve(host, 443)
