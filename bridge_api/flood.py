"""Requests per minute, per caller: a flood is refused before anything reaches Discord."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from aiohttp import web

from bridge_api.errors import APIError

WINDOW = 60.0
# Callers are forgotten once quiet for a window; the map is swept this often (in checks).
SWEEP_EVERY = 1024


class RateLimiter:
    """At most `per_minute` requests in any 60 seconds for each caller (0: no limit)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._checks = 0

    def wait(self, caller: str) -> float | None:
        """None when `caller` may go on (and counts it), else the seconds until it may."""
        if not self._per_minute:
            return None
        now = self._clock()
        self._checks += 1
        if self._checks % SWEEP_EVERY == 0:
            self._seen = {key: times for key, times in self._seen.items() if now - times[-1] < WINDOW}
        times = self._seen.setdefault(caller, deque(maxlen=self._per_minute))
        if len(times) == self._per_minute and now - times[0] < WINDOW:
            return WINDOW - (now - times[0])
        times.append(now)
        return None

    def admit(self, caller: str) -> None:
        """Count the request, or 429 rate_limit_exceeded with Retry-After past the limit."""
        if (wait := self.wait(caller)) is not None:
            raise APIError(
                429,
                "Too many requests for this API key (or address) in the last minute.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, round(wait)))},
            )


def caller_of(request: web.Request, key: str | None, keys_set: bool) -> str:
    """Who is counted: the API key when keys are set, else the client's address."""
    return f"key:{key}" if keys_set and key else f"addr:{request.remote}"
