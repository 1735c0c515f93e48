"""Images callers send (image_url parts): fetched or decoded, checked, ready to upload.

Only png, jpeg, gif and webp pass, recognised by their first bytes (a server's Content-Type
or a data: URL's label can lie), none larger than `api.max_image_bytes`, and all of one prompt
within `api.max_upload_bytes`. URLs are fetched through the guarded client (`outbound`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from collections.abc import Sequence

from bot.interface import ImageFile
from bridge_api.errors import APIError
from bridge_api.outbound import Budget, BudgetExceeded, FetchFailed, Outbound, TooLarge

log = logging.getLogger(__name__)

EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}
UNFETCHABLE = "could not be fetched as an image"


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


async def fetch(client: Outbound, url: str, limit: int, budget: Budget | None = None) -> bytes:
    """GET an image through the guard; every failure to fetch reads the same to the caller."""
    try:
        return await client.fetch(url, limit, budget)
    except TooLarge:
        raise ImageProblem(f"is larger than {limit} bytes") from None
    except FetchFailed as exc:
        # One message for refused, unreachable, non-2xx and slow URLs: the API is no port or status
        # scanner for the bridge's network. The operator reads the reason in the log.
        log.warning("Image URL %.200r not fetched: %s", url, exc)
        raise ImageProblem(UNFETCHABLE) from None


async def load_image(
    client: Outbound, url: str, limit: int, name: str, budget: Budget | None = None
) -> ImageFile:
    if url.startswith("data:"):
        data = decode_data_url(url, limit)
        if budget is not None:
            budget.take(len(data))
    elif url.startswith(("http://", "https://")):
        data = await fetch(client, url, limit, budget)
    else:
        raise ImageProblem("must be an http(s) or data: URL")
    if len(data) > limit:
        raise ImageProblem(f"is larger than {limit} bytes")
    kind = sniff(data)
    if kind is None:
        if not url.startswith("data:"):
            log.warning("Image URL %.200r not fetched: not a png, jpeg, gif or webp image", url)
            raise ImageProblem(UNFETCHABLE)
        raise ImageProblem("is not a png, jpeg, gif or webp image")
    digest = hashlib.sha256(data).hexdigest()[:12]
    return ImageFile(filename=f"{name}-{digest}.{EXTENSIONS[kind]}", content_type=kind, data=data)


async def load_images(
    client: Outbound, parts: Sequence[tuple[str, str]], limit: int, total: int
) -> list[ImageFile]:
    """Load every (param, url) at once; the first bad one is a 400 naming its part.

    Each may hold `limit` bytes, all of them together `total` (Discord's upload limit).
    """
    if not parts:
        return []
    budget = Budget(total)

    async def one(position: int, param: str, url: str) -> ImageFile:
        try:
            return await load_image(client, url, limit, f"image{position + 1}", budget)
        except ImageProblem as exc:
            raise APIError(400, f"The image at '{param}' {exc}.", code="invalid_image", param=param) from None
        except BudgetExceeded as exc:
            raise APIError(
                400,
                f"The images of one prompt may hold {exc.limit} bytes together (Discord's upload limit).",
                code="images_too_large",
                param="messages",
            ) from None

    try:
        # A TaskGroup cancels the other fetches as soon as one image is refused.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(n, param, url)) for n, (param, url) in enumerate(parts)]
    except* APIError as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]
