"""POST /v1/images/generations: a drawing prompt to a Coze bot, answered in OpenAI's images shape."""

from __future__ import annotations

import base64
import logging
import re
import time
from typing import Literal

from aiohttp import web
from pydantic import Field

from bot.interface import ChatTurn, PromptRequest
from bridge_api.appkeys import BACKEND, CONFIG, HTTP_CLIENT, IMAGES, MODEL, REQUEST_ID
from bridge_api.chat import collect_reply, read_json, refuse_floods, require_ready
from bridge_api.errors import APIError
from bridge_api.image_input import ImageProblem, fetch, sniff
from bridge_api.model_access import resolve_model, visible_models
from bridge_api.schemas import Lenient, parse_body

log = logging.getLogger(__name__)

# Candidate URLs tried at most, so a reply full of links cannot keep a request fetching.
MAX_CANDIDATES = 12
# Coze sometimes writes the image into the text as a markdown link instead of an embed.
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\((\S+?)\)")


class ImageRequest(Lenient):
    prompt: str = Field(min_length=1, max_length=4000)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=10)
    response_format: Literal["url", "b64_json"] = "url"
    # size, quality and style are accepted and left to the Coze bot.


async def image_generations(request: web.Request) -> web.Response:
    ask = parse_body(ImageRequest, await read_json(request))
    names = visible_models(request)
    name = ask.model or (names[0] if names else "")
    request[MODEL] = name
    route = resolve_model(request, name)
    backend = request.app[BACKEND]
    require_ready(backend)
    refuse_floods(request)
    instruction = request.app[CONFIG].now.settings.images.instruction
    prompt = PromptRequest(
        request_id=request[REQUEST_ID],
        model=name,
        turns=(ChatTurn("user", instruction + ask.prompt),),
        route=route,
        fresh=True,
        limits=request.app[CONFIG].now.settings.api.limits(),
    )
    finished = await collect_reply(request, backend, prompt)
    candidates = list(dict.fromkeys([*finished.images, *MARKDOWN_IMAGE.findall(finished.content)]))
    images = await _fetch_images(request, candidates[:MAX_CANDIDATES], ask.n)
    if not images:
        # Coze's text may say anything (a caller can dictate it): not in the message gateways read.
        raise APIError(
            502,
            "The Coze bot answered without an image; its text is in coze_notice.",
            code="no_image",
            coze_notice=finished.content.strip()[:1000],
        )
    if ask.response_format == "url":
        data = [{"url": url, "revised_prompt": ask.prompt} for url, _ in images]
    else:
        data = [
            {"b64_json": base64.b64encode(raw).decode(), "revised_prompt": ask.prompt} for _, raw in images
        ]
    return web.json_response({"created": int(time.time()), "data": data})


async def _fetch_images(request: web.Request, urls: list[str], n: int) -> list[tuple[str, bytes]]:
    """The first `n` of `urls` that fetch through the guard as images, with their bytes.

    A reply's text is Coze's to write (and a prompt can steer it): only what is an image gets
    back to the caller, never what some URL in the text returns.
    """
    client = request.app[HTTP_CLIENT]
    cache = request.app.get(IMAGES)
    limit = request.app[CONFIG].now.settings.api.max_image_bytes
    images: list[tuple[str, bytes]] = []
    for url in urls:
        if len(images) == n:
            break
        # The answer links to the bridge's own copy when it kept one: read from its folder.
        kept = await cache.read(url) if cache is not None else None
        if kept is not None:
            images.append((url, kept))
            continue
        try:
            raw = await fetch(client, url, limit)
        except ImageProblem as exc:
            log.warning("Generated image %.200r dropped: %s", url, exc)
            continue
        if sniff(raw) is None:
            log.warning("Generated image %.200r dropped: not a png, jpeg, gif or webp image", url)
            continue
        images.append((url, raw))
    return images
