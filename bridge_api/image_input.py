"""Images callers send (image_url parts): fetched or decoded, checked, ready to upload.

Only png, jpeg, gif and webp pass, recognised by their first bytes (a server's Content-Type
or a data: URL's label can lie), and none larger than `api.max_image_bytes`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections.abc import Sequence

import aiohttp

from bot.interface import ImageFile
from bridge_api.errors import APIError

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}
FETCH_TIMEOUT = 15.0


class ImageProblem(Exception):
    """Why an image cannot be used, in words for the caller."""


def sniff(data: bytes) -> str | None:
    """The image type from the file's magic bytes, or None when it is none we accept."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def decode_data_url(url: str, limit: int) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:"):
        raise ImageProblem("is not a valid data: URL")
    if not header.endswith(";base64"):
        raise ImageProblem("must be base64-encoded (data:image/png;base64,...)")
    # Base64 grows data by a third: refuse before decoding what would be too large anyway.
    if len(payload) > (limit + 2) // 3 * 4 + 4:
        raise ImageProblem(f"is larger than {limit} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageProblem("is not valid base64") from None


async def fetch(session: aiohttp.ClientSession, url: str, limit: int) -> bytes:
    """GET an image, reading no more than `limit` bytes."""
    try:
        async with asyncio.timeout(FETCH_TIMEOUT), session.get(url) as response:
            if response.status != 200:
                raise ImageProblem(f"could not be fetched (HTTP {response.status})")
            if (response.content_length or 0) > limit:
                raise ImageProblem(f"is larger than {limit} bytes")
            data = await response.content.read(limit + 1)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ImageProblem(f"could not be fetched ({type(exc).__name__})") from None
    if len(data) > limit:
        raise ImageProblem(f"is larger than {limit} bytes")
    return data


async def load_image(session: aiohttp.ClientSession, url: str, limit: int, name: str) -> ImageFile:
    if url.startswith("data:"):
        data = decode_data_url(url, limit)
    elif url.startswith(("http://", "https://")):
        data = await fetch(session, url, limit)
    else:
        raise ImageProblem("must be an http(s) or data: URL")
    if len(data) > limit:
        raise ImageProblem(f"is larger than {limit} bytes")
    kind = sniff(data)
    if kind is None:
        raise ImageProblem("is not a png, jpeg, gif or webp image")
    digest = hashlib.sha256(data).hexdigest()[:12]
    return ImageFile(filename=f"{name}-{digest}.{EXTENSIONS[kind]}", content_type=kind, data=data)


async def load_images(
    session: aiohttp.ClientSession, parts: Sequence[tuple[str, str]], limit: int
) -> list[ImageFile]:
    """Load every (param, url) at once; the first bad one is a 400 naming its part."""
    if not parts:
        return []

    async def one(position: int, param: str, url: str) -> ImageFile:
        try:
            return await load_image(session, url, limit, f"image{position + 1}")
        except ImageProblem as exc:
            raise APIError(400, f"The image at '{param}' {exc}.", code="invalid_image", param=param) from None

    try:
        # A TaskGroup cancels the other fetches as soon as one image is refused.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(n, param, url)) for n, (param, url) in enumerate(parts)]
    except* APIError as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]
