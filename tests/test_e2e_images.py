"""Images both ways: caller images become real attachments; Coze's images become links."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp import web

from bridge_api.app import serving
from simdiscord import ReplyPlan, SimulatedDiscord
from simdiscord.payloads import attachment_url
from simdiscord.png import solid_png
from tests.conftest import Bridge, BridgeFactory
from tests.test_outbound import MiB, noisy_png

RED = solid_png(16, 16, (255, 0, 0))
GIF = b"GIF89a" + bytes(20)
# The simulation's CDN is on loopback: fetching from it needs the address check lifted.
LAN = {"allow_private_networks": True}


@pytest.fixture
async def lan_bridge(start_bridge: BridgeFactory) -> Bridge:
    bridge: Bridge = await start_bridge(images=LAN)
    return bridge


@pytest.fixture
async def secret() -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback server with something private at /secret: its URL and the paths it was asked for."""
    hits: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"internal secret " + bytes(64))

    app = web.Application()
    app.router.add_get("/{name}", answer)
    async with serving(app) as (_, port):
        yield f"http://127.0.0.1:{port}/secret", hits


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def hosted(sim: SimulatedDiscord, name: str, data: bytes) -> str:
    """An image served over http by the simulation's file route."""
    item = sim.world.add_attachment(name, "image/png", data)
    return attachment_url(sim.world, sim.channel_id, item)


def with_images(*urls: str, text: str = "What is in these pictures?") -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": parts}]


async def post_chat(bridge: Bridge, body: dict[str, Any]) -> tuple[int, Any]:
    async with bridge.http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as resp:
        return resp.status, await resp.json()


async def test_caller_images_are_uploaded_as_attachments(sim: SimulatedDiscord, lan_bridge: Bridge) -> None:
    bridge = lan_bridge
    blue = solid_png(4, 4, (0, 0, 255))
    messages = with_images(data_url(RED), hosted(sim, "blue.png", blue))
    # A bare-string image_url, as some clients send it.
    messages[0]["content"].append({"type": "image_url", "image_url": data_url(GIF, "image/gif")})
    async with bridge.openai() as client:
        response = await client.chat.completions.create(model="coze", messages=messages)  # type: ignore[arg-type]
    (prompt,) = sim.prompts_received
    assert prompt.content == "What is in these pictures?"
    (posted,) = [m for m in sim.messages if m.id == prompt.message_id]
    assert [a.content_type for a in posted.attachments] == ["image/png", "image/png", "image/gif"]
    sent = [hashlib.sha256(a.data).hexdigest() for a in posted.attachments]
    assert sent == [hashlib.sha256(x).hexdigest() for x in (RED, blue, GIF)], "the exact bytes arrived"
    assert "I see 3 image(s)" in (response.choices[0].message.content or "")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (data_url(b"just some text"), "is not a png, jpeg, gif or webp image"),
        ("data:image/png;base64,@@@", "is not valid base64"),
        ("ftp://example.com/x.png", "must be an http(s) or data: URL"),
        ("http://127.0.0.1:9/nothing.png", "could not be fetched"),
        (data_url(solid_png(200, 200, (1, 2, 3)) + bytes(4096)), "is larger than 2048 bytes"),
    ],
    ids=["not-an-image", "bad-base64", "scheme", "unreachable", "too-large"],
)
async def test_a_bad_image_is_400_naming_its_part(
    sim: SimulatedDiscord, start_bridge: BridgeFactory, url: str, fragment: str
) -> None:
    bridge: Bridge = await start_bridge(api={"max_image_bytes": 2048})
    status, body = await post_chat(bridge, {"model": "coze", "messages": with_images(data_url(RED), url)})
    assert status == 400, body
    assert body["error"]["param"] == "messages[0].content[2].image_url"
    assert body["error"]["code"] == "invalid_image"
    assert fragment in body["error"]["message"]
    assert sim.prompts_received == []


async def test_a_missing_image_url_is_400(sim: SimulatedDiscord, bridge: Bridge) -> None:
    body = {
        "model": "coze",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
    }
    status, answer = await post_chat(bridge, body)
    assert status == 400
    assert answer["error"]["param"] == "messages[0].content[0].image_url.url"


async def test_a_missing_image_url_page_is_400(sim: SimulatedDiscord, lan_bridge: Bridge) -> None:
    missing = hosted(sim, "gone.png", RED).replace("gone.png", "other.png")
    status, body = await post_chat(lan_bridge, {"model": "coze", "messages": with_images(missing)})
    assert status == 400
    # The same words as any other URL that does not fetch: the status stays in the log.
    assert (
        body["error"]["message"]
        == "The image at 'messages[0].content[1].image_url' could not be fetched as an image."
    )


async def test_an_image_url_into_the_bridges_network_is_refused(
    sim: SimulatedDiscord, bridge: Bridge, secret: tuple[str, list[str]]
) -> None:
    url, hits = secret
    status, body = await post_chat(bridge, {"model": "coze", "messages": with_images(url)})
    assert status == 400, body
    assert (body["error"]["code"], body["error"]["param"]) == (
        "invalid_image",
        "messages[0].content[1].image_url",
    )
    assert sim.prompts_received == []
    assert hits == [], "nothing was fetched"


async def test_a_large_image_is_uploaded_whole(sim: SimulatedDiscord, lan_bridge: Bridge) -> None:
    # 3 MiB: the old fetch kept only what happened to be buffered (64-128 KiB).
    photo = noisy_png(3 * MiB)
    assert len(photo) > 3 * MiB - 16384
    status, body = await post_chat(
        lan_bridge, {"model": "coze", "messages": with_images(hosted(sim, "p.png", photo))}
    )
    assert status == 200, body
    (prompt,) = sim.prompts_received
    (posted,) = [m for m in sim.messages if m.id == prompt.message_id]
    assert [a.data == photo for a in posted.attachments] == [True]


async def test_an_image_over_the_limit_is_400(sim: SimulatedDiscord, lan_bridge: Bridge) -> None:
    status, body = await post_chat(
        lan_bridge, {"model": "coze", "messages": with_images(hosted(sim, "big.png", RED + bytes(9 * MiB)))}
    )
    assert status == 400, body
    assert f"is larger than {8 * MiB} bytes" in body["error"]["message"]
    assert sim.prompts_received == []


async def test_a_prompts_images_together_stay_within_the_upload_limit(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(api={"max_upload_bytes": 3000})
    two = [data_url(noisy_png(1600)), data_url(noisy_png(1600))]
    status, body = await post_chat(bridge, {"model": "coze", "messages": with_images(*two)})
    assert status == 400, body
    assert (body["error"]["code"], body["error"]["param"]) == ("images_too_large", "messages")
    assert sim.prompts_received == []


@pytest.mark.parametrize("word", ["sim:image", "sim:attachment"])
async def test_coze_images_come_back_as_markdown_once(
    sim: SimulatedDiscord, bridge: Bridge, word: str
) -> None:
    async with bridge.http.post(
        f"{bridge.base_url}/v1/chat/completions",
        json={"model": "coze", "stream": True, "messages": [{"role": "user", "content": f"paint {word}"}]},
    ) as resp:
        frames = [f[6:] for f in (await resp.read()).decode().split("\n\n") if f.startswith("data: {")]
    streamed = "".join(json.loads(f)["choices"][0]["delta"].get("content") or "" for f in frames)
    (item,) = [a for a in sim.world.attachments.values() if a.filename.startswith("picture")]
    url = attachment_url(sim.world, sim.prompts_received[0].channel_id, item)
    assert streamed == f"Here is your picture.\n\n![image]({url})"
    async with bridge.openai() as client:
        plain = await client.chat.completions.create(
            model="coze", messages=[{"role": "user", "content": f"again {word}"}]
        )
    assert (plain.choices[0].message.content or "").count("![image](") == 1


async def test_image_generation_returns_urls(sim: SimulatedDiscord, start_bridge: BridgeFactory) -> None:
    bridge: Bridge = await start_bridge(images={"instruction": "Draw: "} | LAN)
    async with bridge.openai() as client:
        result = await client.images.generate(model="coze", prompt="a red square")
    assert sim.prompts_received[0].content == "Draw: a red square"
    assert result.data is not None
    (image,) = result.data
    assert image.url is not None
    async with bridge.http.get(image.url) as resp:
        assert resp.status == 200
        assert (await resp.read()).startswith(b"\x89PNG")


async def test_image_generation_as_b64_json(sim: SimulatedDiscord, lan_bridge: Bridge) -> None:
    async with lan_bridge.openai() as client:
        result = await client.images.generate(prompt="a square", response_format="b64_json")
    assert result.data is not None
    (image,) = result.data
    assert image.b64_json is not None
    (item,) = [a for a in sim.world.attachments.values() if a.filename.startswith("picture")]
    assert base64.b64decode(image.b64_json) == item.data


async def test_image_generation_without_an_image_is_502(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(images={"instruction": "Describe: "})
    async with bridge.openai() as client:
        with pytest.raises(openai.APIStatusError) as failed:
            await client.images.generate(model="coze", prompt="a cat")
    assert failed.value.status_code == 502
    assert "without an image" in failed.value.message


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
@pytest.mark.parametrize("private", [False, True], ids=["guarded", "lan"])
async def test_image_generation_returns_only_images(
    sim: SimulatedDiscord,
    start_bridge: BridgeFactory,
    secret: tuple[str, list[str]],
    response_format: str,
    private: bool,
) -> None:
    url, hits = secret
    sim.script = lambda prompt: ReplyPlan(text=f"Here it is: ![x]({url})", chunk_chars=400, step_delay=0.002)
    bridge: Bridge = await start_bridge(images={"allow_private_networks": private})
    body = {"prompt": "draw the secret", "response_format": response_format}
    async with bridge.http.post(f"{bridge.base_url}/v1/images/generations", json=body) as resp:
        status, answer = resp.status, await resp.read()
    assert status == 502, answer
    assert json.loads(answer)["error"]["code"] == "no_image"
    assert b"internal secret" not in answer
    assert base64.b64encode(b"internal secret") not in answer
    # Guarded, nothing is fetched; on a LAN it is fetched, and dropped for not being an image.
    assert hits == (["/secret"] if private else [])


async def test_image_generation_validates_its_body(bridge: Bridge) -> None:
    async with bridge.http.post(f"{bridge.base_url}/v1/images/generations", json={"prompt": ""}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "prompt"
