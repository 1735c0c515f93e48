"""Lasting copies of the images in Coze's replies, and GET /images/{id}.{ext} that serves them.

Discord's attachment and CDN links are signed and stop working after about a day. With
`api.public_url` set, each image a reply links to is fetched once through the guarded client
into `images.cache_dir`, and the answer links to the bridge's copy instead. The files are the
cache: its index is rebuilt from the folder at start, and the oldest go first past `images.cache_mb`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from bot.interface import StartupError
from bot.tasks import TaskSet
from bridge_api.appkeys import CONFIG, HTTP_CLIENT, IMAGES
from bridge_api.errors import APIError
from bridge_api.image_input import EXTENSIONS, ImageProblem, fetch, sniff
from bridge_api.outbound import Outbound

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# The longest an answer waits for its images' copies before it links to Discord's URLs; the
# fetch goes on in the background, so a later answer with the same image can use it.
KEEP_WAIT_SECONDS = 4.0
CONTENT_TYPES = {ext: kind for kind, ext in EXTENSIONS.items()}
# A kept file's name: 128 random bits (token_urlsafe(16)) and the extension its bytes proved.
NAME = re.compile(r"[A-Za-z0-9_-]{22}\.(?:png|jpg|gif|webp)")
PARTIAL = ".part"
SERVED_HEADERS = {
    # The bytes behind a name never change.
    "Cache-Control": "public, max-age=31536000, immutable",
    "X-Content-Type-Options": "nosniff",
    # Only the magic bytes were checked: whatever else the file holds may run nothing.
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


class ImageCache:
    """The `ImageKeeper` of the port: `keep(url)` gives the lasting link for a Discord image URL."""

    def __init__(
        self,
        folder: Path,
        *,
        max_bytes: int,
        client: Outbound,
        public_url: str | None,
        max_image_bytes: int,
        wait_seconds: float = KEEP_WAIT_SECONDS,
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.max_image_bytes = max_image_bytes
        self.wait_seconds = wait_seconds
        self._client = client
        self._prefix = None if public_url is None else public_url.rstrip("/") + "/images/"
        # Kept files, oldest first, with their sizes; and which URL each was fetched from.
        self._files: OrderedDict[str, int] = OrderedDict()
        self._total = 0
        self._by_url: dict[str, str] = {}
        self._url_of: dict[str, str] = {}
        self._fetching: dict[str, asyncio.Task[str | None]] = {}
        self._tasks = TaskSet()

    @property
    def total_bytes(self) -> int:
        return self._total

    def names(self) -> list[str]:
        """The kept files' names, oldest first."""
        return list(self._files)

    async def open(self) -> None:
        """Take in the files an earlier run kept (the folder is made on the first copy)."""
        found = await asyncio.to_thread(_scan, self.folder)
        for name, size in found:
            self._files[name] = size
            self._total += size
        if found:
            log.info("%d kept image(s), %.1f MiB, in %s", len(found), self._total / MiB, self.folder)
        await self._evict()

    async def close(self) -> None:
        await self._tasks.close()

    async def keep(self, url: str) -> str:
        """The bridge's lasting link for `url`, or `url` itself when no copy can be had in time."""
        if self._prefix is None or url.startswith(self._prefix):
            return url
        name = self._by_url.get(url)
        if name is not None and name in self._files:
            return self._prefix + name
        task = self._fetching.get(url)
        if task is None:
            task = self._tasks.spawn(self._copy(url), name="keep-image")
            self._fetching[url] = task
            task.add_done_callback(lambda _: self._fetching.pop(url, None))
        # asyncio.wait neither cancels the copy when the wait runs out nor raises its cancellation.
        done, _ = await asyncio.wait({task}, timeout=self.wait_seconds)
        if not done:
            log.warning(
                "Image %.200r from a reply not kept within %g s: the answer links to it as it is",
                url,
                self.wait_seconds,
            )
            return url
        # A copy that failed (the task set logged it) or was cut short leaves Discord's link.
        name = None if task.cancelled() or task.exception() is not None else task.result()
        return url if name is None else self._prefix + name

    def path(self, name: str) -> Path | None:
        """The kept file called `name`, or None for any other name."""
        if not NAME.fullmatch(name) or name not in self._files:
            return None
        return self.folder / name

    async def read(self, url: str) -> bytes | None:
        """The bytes of a link `keep` gave, or None when `url` is none of the kept ones."""
        if self._prefix is None or not url.startswith(self._prefix):
            return None
        path = self.path(url[len(self._prefix) :])
        if path is None:
            return None
        try:
            return await asyncio.to_thread(path.read_bytes)
        except OSError:
            return None  # evicted meanwhile

    async def _copy(self, url: str) -> str | None:
        """Fetch `url` and keep it when it is an image that fits; None (logged) when not."""
        try:
            data = await fetch(self._client, url, self.max_image_bytes)
        except ImageProblem as exc:
            log.warning("Image %.200r from a reply not kept (the answer links to it as it is): %s", url, exc)
            return None
        kind = sniff(data)
        if kind is None:
            log.warning("Image %.200r from a reply not kept: not a png, jpeg, gif or webp image", url)
            return None
        if len(data) > self.max_bytes:
            log.warning("Image %.200r from a reply not kept: larger than images.cache_mb", url)
            return None
        name = f"{secrets.token_urlsafe(16)}.{EXTENSIONS[kind]}"
        try:
            await asyncio.to_thread(_write, self.folder, name, data)
        except OSError as exc:
            log.warning("Image %.200r from a reply not kept: %s: %s", url, self.folder, exc.strerror)
            return None
        self._files[name] = len(data)
        self._total += len(data)
        self._by_url[url] = name
        self._url_of[name] = url
        await self._evict()
        return name

    async def _evict(self) -> None:
        gone: list[str] = []
        while self._total > self.max_bytes and self._files:
            name, size = self._files.popitem(last=False)
            self._total -= size
            self._by_url.pop(self._url_of.pop(name, ""), None)
            gone.append(name)
        if gone:
            await asyncio.to_thread(_remove, self.folder, gone)


def _scan(folder: Path) -> list[tuple[str, int]]:
    """The kept files in `folder`, oldest first; copies a crash left half-written are removed."""
    found: list[tuple[int, str, int]] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StartupError(f"images.cache_dir {folder} cannot be read: {exc.strerror}") from None
    for entry in entries:
        if entry.name.endswith(PARTIAL) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
        elif NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            stat = entry.stat(follow_symlinks=False)
            found.append((stat.st_mtime_ns, entry.name, stat.st_size))
    return [(name, size) for _, name, size in sorted(found)]


def _write(folder: Path, name: str, data: bytes) -> None:
    # Written aside and renamed: a restart never finds half a file under a served name.
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{name}{PARTIAL}"
    with open(partial, "xb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, folder / name)


def _remove(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).unlink(missing_ok=True)


async def serve_image(request: web.Request) -> web.StreamResponse:
    """GET /images/{name}: a kept image. No key: the name is the secret (128 random bits)."""
    name = request.match_info["name"]
    cache = request.app.get(IMAGES)
    path = cache.path(name) if cache is not None else None
    if path is None:
        raise APIError(404, "No such image.", code="image_not_found")
    headers = SERVED_HEADERS | {
        "Content-Type": CONTENT_TYPES[name.rpartition(".")[2]],
        "Content-Disposition": f'inline; filename="{name}"',
    }
    return web.FileResponse(path, headers=headers)


async def image_cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the cache, after the HTTP client it fetches with and before the backend."""
    settings = app[CONFIG].now.settings
    cache = ImageCache(
        settings.images.cache_dir,
        max_bytes=settings.images.cache_mb * MiB,
        client=app[HTTP_CLIENT],
        public_url=settings.api.public_url,
        max_image_bytes=settings.api.max_image_bytes,
    )
    await cache.open()
    app[IMAGES] = cache
    try:
        yield
    finally:
        await cache.close()
