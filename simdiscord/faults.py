"""Injected REST failures: the next N calls of a route answer with a chosen status."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from aiohttp import web

from simdiscord import errors

_PLACEHOLDER = re.compile(r"\{[^}]*\}")


@dataclass(frozen=True, slots=True)
class Fault:
    status: int
    retry_after: float | None = None
    message: str = "Simulated failure"
    code: int = 0

    def response(self) -> web.Response:
        if self.status == 429:
            return errors.rate_limited(self.retry_after if self.retry_after is not None else 0.1)
        return errors.DiscordError(self.status, self.message, self.code).response()


def route_key(method: str, route: str) -> str:
    """`("post", "/channels/{id}/messages")` and `("POST", "/channels/{channel_id}/messages")` match."""
    return f"{method.upper()} {_PLACEHOLDER.sub('{}', route.rstrip('/'))}"


class Faults:
    """Failures keyed by a route template or by a concrete path (which wins)."""

    def __init__(self) -> None:
        self._queued: dict[str, deque[Fault]] = {}

    def add(self, method: str, route: str, fault: Fault, times: int = 1) -> None:
        self._queued.setdefault(route_key(method, route), deque()).extend([fault] * times)

    def clear(self) -> None:
        self._queued.clear()

    def take(self, method: str, template: str, path: str) -> Fault | None:
        if not self._queued:
            return None  # the common case costs one dict check
        for key in (route_key(method, path), route_key(method, template)):
            queue = self._queued.get(key)
            if queue:
                return queue.popleft()
        return None
