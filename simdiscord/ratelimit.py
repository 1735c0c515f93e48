"""Discord's per-route REST rate limits, as the simulated Discord announces and enforces them.

Real Discord sends `X-RateLimit-*` headers on every answer. discord.py relies on them: without
them it keeps its initial guess of one request at a time per route and channel, which would
serialise e.g. every thread creation in a channel, something that never happens against Discord.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Window:
    opened: float
    used: int = 0


@dataclass(frozen=True)
class Verdict:
    """What the bucket says of one request: allowed or not, and the headers that say so."""

    allowed: bool
    headers: dict[str, str]
    retry_after: float


class RateLimits:
    """Fixed windows per (token, route, major parameter), like Discord's buckets.

    The default is generous so that loads are limited by the code under test; tests lower it.
    """

    def __init__(self, clock: Callable[[], float], *, limit: int = 10_000, window: float = 1.0) -> None:
        self._clock = clock
        self.limit = limit
        self.window = window
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self.refused = 0

    def check(self, token: str, route: str, major: str) -> Verdict:
        now = self._clock()
        key = (token, route, major)
        current = self._windows.get(key)
        if current is None or now - current.opened >= self.window:
            # Drop spent windows now and then so that a long run does not keep every thread's bucket.
            if len(self._windows) > 4096:
                self._windows = {k: w for k, w in self._windows.items() if now - w.opened < self.window}
            current = self._windows[key] = _Window(now)
        reset_after = max(current.opened + self.window - now, 0.001)
        allowed = current.used < self.limit
        if allowed:
            current.used += 1
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.limit - current.used),
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            # Discord names a bucket by the route alone; the major parameter splits it further.
            "X-RateLimit-Bucket": hashlib.sha256(route.encode()).hexdigest()[:16],
        }
        if not allowed:
            self.refused += 1
            headers["X-RateLimit-Scope"] = "user"
        return Verdict(allowed, headers, reset_after)
