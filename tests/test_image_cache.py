"""Images that outlive Discord's links: the bridge keeps copies and serves them at api.public_url."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge_api.app import make_app, serving
from bridge_api.appkeys import BACKEND
from bridge_api.image_cache import ImageCache
from bridge_api.outbound import Outbound
from simdiscord import SimulatedDiscord
from simdiscord.payloads import attachment_url
from simdiscord.png import solid_png
from tests.conftest import sim_settings

PUBLIC = "https://images.example.com/bridge"
KEY = "sk-image-test"
LAN = {"allow_private_networks": True}  # the simulation's CDN is on loopback
DAY = 24 * 3600
KEPT_LINK = re.compile(re.escape(PUBLIC) + r"/images/([A-Za-z0-9_-]{22})\.png")


@dataclass
class Running:
    base_url: str
    http: aiohttp.ClientSession
    stop: Callable[[], Awaitable[None]]

    def local(self, link: str) -> str:
        """A link the answer gave (at api.public_url) as this test reaches the bridge."""
        assert link.startswith(PUBLIC + "/"), link
        return self.base_url + link[len(PUBLIC) :]

    async def chat(self, prompt: str, *, stream: bool = False) -> str:
        body = {"model": "coze", "stream": stream, "messages": [{"role": "user", "content": prompt}]}
        async with self.http.post(
            f"{self.base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            if not stream:
                return str((await resp.json())["choices"][0]["message"]["content"])
            frames = [f[6:] for f in (await resp.read()).decode().split("\n\n") if f.startswith("data: {")]
        return "".join(json.loads(f)["choices"][0]["delta"].get("content") or "" for f in frames)


Starter = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start(sim: SimulatedDiscord, tmp_path: Path) -> AsyncIterator[Starter]:
    """The bridge as `coze-bridge` runs it: the app opens the backend itself, with its keeper."""
    stacks: list[contextlib.AsyncExitStack] = []

    async def begin(public_url: str | None = PUBLIC, **sections: Any) -> Running:
        api = {"keys": [KEY], "public_url": public_url} | sections.pop("api", {})
        images = {"cache_dir": str(tmp_path / "images")} | LAN | sections.pop("images", {})
        settings = sim_settings(sim, tmp_path, api=api, images=images, **sections)
        stack = contextlib.AsyncExitStack()
        stacks.append(stack)
        app = make_app(settings, 0)
        _, port = await stack.enter_async_context(serving(app))
        async with asyncio.timeout(10):
            await app[BACKEND].wait_ready()
        http = await stack.enter_async_context(aiohttp.ClientSession())
        return Running(f"http://127.0.0.1:{port}", http, stack.aclose)

    yield begin
    for stack in reversed(stacks):
        await stack.aclose()


def drawn(sim: SimulatedDiscord) -> list[tuple[str, bytes]]:
    """The images the simulated Coze drew: their Discord links and bytes, in order."""
    items = [a for a in sim.world.attachments.values() if a.filename.startswith("picture")]
    channel = sim.prompts_received[-1].channel_id
    return [(attachment_url(sim.world, channel, item), item.data) for item in items]


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes, dict[str, str]]:
    async with http.get(url) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("word", ["sim:image", "sim:attachment"])
async def test_the_answer_links_to_a_copy_that_outlives_discords_link(
    sim: SimulatedDiscord, start: Starter, stream: bool, word: str
) -> None:
    bridge = await start()
    answer = await bridge.chat(f"paint {word}", stream=stream)
    ((discord_url, data),) = drawn(sim)
    (found,) = KEPT_LINK.finditer(answer)
    assert answer == f"Here is your picture.\n\n![image]({found.group()})"
    assert discord_url not in answer
    # A day and more later, Discord's link is dead; the bridge's copy is not.
    sim.move_cdn_clock(DAY + 60)
    status, _, _ = await get(bridge.http, discord_url)
    assert status == 404
    status, body, headers = await get(bridge.http, bridge.local(found.group()))  # no API key
    assert status == 200
    assert body == data
    assert headers["Content-Type"] == "image/png"
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Disposition"].startswith("inline")
    assert headers["Content-Security-Policy"] == "default-src 'none'; sandbox"


async def test_kept_copies_survive_a_restart(sim: SimulatedDiscord, start: Starter, tmp_path: Path) -> None:
    bridge = await start()
    first = KEPT_LINK.search(await bridge.chat("draw a red square"))
    assert first is not None
    await bridge.stop()
    sim.move_cdn_clock(DAY + 60)
    again = await start()
    status, body, _ = await get(again.http, again.local(first.group()))
    assert status == 200
    assert body == drawn(sim)[0][1]
    assert listed(tmp_path / "images") == [f"{first.group(1)}.png"]


async def test_image_generation_reads_the_kept_copy(sim: SimulatedDiscord, start: Starter) -> None:
    bridge = await start()
    headers = {"Authorization": f"Bearer {KEY}"}
    for response_format in ("url", "b64_json"):
        body = {"prompt": "a square", "response_format": response_format}
        async with bridge.http.post(
            f"{bridge.base_url}/v1/images/generations", json=body, headers=headers
        ) as resp:
            assert resp.status == 200, await resp.text()
            (image,) = (await resp.json())["data"]
        # PUBLIC's host does not exist: the bytes came from the cache's folder.
        if response_format == "url":
            assert KEPT_LINK.fullmatch(image["url"])
        else:
            assert base64.b64decode(image["b64_json"]) == drawn(sim)[-1][1]


async def test_without_public_url_discords_link_is_passed_on(
    sim: SimulatedDiscord, start: Starter, tmp_path: Path
) -> None:
    bridge = await start(public_url=None)
    answer = await bridge.chat("draw a cat")
    ((discord_url, _),) = drawn(sim)
    assert answer == f"Here is your picture.\n\n![image]({discord_url})"
    assert not (tmp_path / "images").exists(), "nothing was kept"


async def test_an_image_that_cannot_be_fetched_keeps_discords_link(
    sim: SimulatedDiscord, start: Starter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    sim.link_seconds = 0  # the link is dead by the time the bridge fetches it
    bridge = await start()
    answer = await bridge.chat("draw a cat", stream=True)
    ((discord_url, _),) = drawn(sim)
    assert answer == f"Here is your picture.\n\n![image]({discord_url})"
    assert "from a reply not kept" in caplog.text
    assert "HTTP 404" in caplog.text


@pytest.mark.parametrize(
    "path",
    [
        "/images/..%2Fbridge.db",
        "/images/..%2Fimages%2Fnotes.txt",
        "/images/%2e%2e%2fbridge.db",
        "/images/notes.txt",
        "/images/AAAAAAAAAAAAAAAAAAAAAA.png",  # the right shape, no such copy
        "/images/{id}.jpg",  # a kept id with another extension
        "/images/{id}.png%00",
        "/images/{id}.png%2F",
        "/images/{id}",
        "/images/.{id}.png.part",
        "/images/generations",
    ],
)
async def test_anything_but_a_kept_name_is_404(
    sim: SimulatedDiscord, start: Starter, tmp_path: Path, path: str
) -> None:
    bridge = await start()
    kept = KEPT_LINK.search(await bridge.chat("draw a cat"))
    assert kept is not None
    (tmp_path / "images" / "notes.txt").write_text("not for callers")
    target = path.replace("{id}", kept.group(1))
    # Sent as written: a client library would normalise the path first.
    reader, writer = await asyncio.open_connection("127.0.0.1", int(bridge.base_url.rpartition(":")[2]))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: bridge\r\nConnection: close\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404"), head
    assert b"not for callers" not in body
    assert b"SQLite" not in body


# The cache itself, over a local image server.


@dataclass
class Served:
    base_url: str
    hits: list[str]
    gate: asyncio.Event


@pytest.fixture
async def images() -> AsyncIterator[Served]:
    """/{n}.png: a distinct 1 KiB-ish PNG each; /text: not an image; /held.png waits for `gate`."""
    hits: list[str] = []
    gate = asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        hits.append(name)
        if name == "text":
            return web.Response(body=b"<html>not an image</html>", content_type="text/html")
        if name == "held.png":
            await gate.wait()
        return web.Response(body=picture(name), content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", answer)
    async with serving(app) as (_, port):
        yield Served(f"http://127.0.0.1:{port}", hits, gate)
    gate.set()


def picture(name: str) -> bytes:
    shade = sum(name.encode()) % 256
    return solid_png(16, 16, (shade, 40, 200)) + bytes(1000)  # trailing bytes keep its size known


@contextlib.asynccontextmanager
async def cache_in(folder: Path, **options: Any) -> AsyncIterator[ImageCache]:
    settings = {"max_bytes": 10 * 1024 * 1024, "public_url": PUBLIC, "max_image_bytes": 1024 * 1024} | options
    async with Outbound(refused=None) as client:
        cache = ImageCache(folder, client=client, **settings)
        await cache.open()
        try:
            yield cache
        finally:
            await cache.close()


def listed(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def name_of(link: str) -> str:
    found = KEPT_LINK.fullmatch(link)
    assert found is not None, link
    return found.group(1) + ".png"


async def test_the_size_bound_evicts_the_oldest(images: Served, tmp_path: Path) -> None:
    size = len(picture("1.png"))
    async with cache_in(tmp_path, max_bytes=2 * size + 100) as cache:
        links = [await cache.keep(f"{images.base_url}/{n}.png") for n in (1, 2, 3)]
        names = [name_of(link) for link in links]
        assert cache.names() == names[1:]
        assert listed(tmp_path) == sorted(names[1:])
        assert cache.total_bytes == 2 * size
        assert cache.path(names[0]) is None
        # A URL kept before is not fetched again; an evicted one is, under a new name.
        assert await cache.keep(f"{images.base_url}/2.png") == links[1]
        renewed = await cache.keep(f"{images.base_url}/1.png")
        assert renewed != links[0]
        assert images.hits == ["1.png", "2.png", "3.png", "1.png"]
        assert cache.names() == [names[2], name_of(renewed)]


async def test_a_restart_finds_the_files_oldest_first(images: Served, tmp_path: Path) -> None:
    async with cache_in(tmp_path) as cache:
        links = [await cache.keep(f"{images.base_url}/{n}.png") for n in (1, 2, 3)]
    (tmp_path / f".{name_of(links[0])}.part").write_bytes(b"half a file")  # a crash mid-write
    size = len(picture("1.png"))
    async with cache_in(tmp_path, max_bytes=2 * size) as again:
        # Smaller now: the oldest went at start.
        assert again.names() == [name_of(link) for link in links[1:]]
        assert await again.read(links[2]) == picture("3.png")
        assert await again.read(links[0]) is None
    assert listed(tmp_path) == sorted(name_of(link) for link in links[1:])


@pytest.mark.parametrize(
    ("path", "limit", "reason"),
    [
        ("/text", 1024 * 1024, "not a png, jpeg, gif or webp image"),
        ("/big.png", 100, "is larger than 100 bytes"),
        ("/missing/x.png", 1024 * 1024, "could not be fetched as an image"),
    ],
    ids=["not-an-image", "too-large", "404"],
)
async def test_what_cannot_be_kept_keeps_its_url(
    images: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture, path: str, limit: int, reason: str
) -> None:
    url = images.base_url + path
    with caplog.at_level(logging.WARNING):
        async with cache_in(tmp_path, max_image_bytes=limit) as cache:
            assert await cache.keep(url) == url
            assert cache.names() == []
    assert reason in caplog.text
    assert listed(tmp_path) == []


async def test_a_slow_fetch_does_not_hold_the_answer(
    images: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{images.base_url}/held.png"
    async with cache_in(tmp_path, wait_seconds=0.2) as cache:
        assert await cache.keep(url) == url, "the wait ran out: Discord's link"
        assert "not kept within" in caplog.text
        images.gate.set()
        # The copy went on: the next answer with this image waits on it (not a second fetch).
        async with asyncio.timeout(5):
            while (link := await cache.keep(url)) == url:
                pass
        assert cache.path(name_of(link)) is not None
    assert images.hits == ["held.png"]


async def test_without_public_url_the_keeper_fetches_nothing(images: Served, tmp_path: Path) -> None:
    async with cache_in(tmp_path, public_url=None) as cache:
        url = f"{images.base_url}/1.png"
        assert await cache.keep(url) == url
    assert images.hits == []
