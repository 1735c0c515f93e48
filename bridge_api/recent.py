"""What the status page shows of the traffic: the last requests, and per-minute figures for an hour.

Kept in memory only, and bounded: a deque of the last `KEPT` requests and a ring of `MINUTES`
buckets, one per minute. Recording runs at the end of every request, so it does a constant amount
of work: the ring's slot for a minute is reused (and reset) when that minute comes round again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

KEPT = 100
MINUTES = 60


@dataclass(frozen=True, slots=True)
class Served:
    """One request as it ended (no key, no body: only what the access line shows)."""

    at: float  # the wall clock when it ended (seconds since the epoch)
    method: str
    path: str
    status: int
    code: str | None  # the error's code, where one was raised
    key: str | None  # the fingerprint of the API key it presented
    model: str | None
    first_token_seconds: float | None
    duration_seconds: float
    continued: bool | None  # a conversation continued (True) or new (False); None: no answer

    def json(self) -> dict[str, object]:
        return {
            "at": _iso(self.at),
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "code": self.code,
            "key": self.key,
            "model": self.model,
            "first_token_seconds": self.first_token_seconds,
            "duration_seconds": self.duration_seconds,
            "continued": self.continued,
        }


@dataclass(slots=True)
class _Minute:
    minute: int = -1  # minutes since the epoch this slot holds; -1: never used
    requests: int = 0
    errors: int = 0
    first_tokens: int = 0
    first_token_total: float = 0.0
    first_token_max: float = 0.0


class Recent:
    """The last requests and the last hour's minutes; `clock` is the wall clock (tests pass their own)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._requests: deque[Served] = deque(maxlen=KEPT)
        self._minutes = [_Minute() for _ in range(MINUTES)]

    def record(self, request: Served) -> None:
        self._requests.append(request)
        minute = int(request.at // 60)
        slot = self._minutes[minute % MINUTES]
        if slot.minute != minute:
            slot.minute, slot.requests, slot.errors = minute, 0, 0
            slot.first_tokens, slot.first_token_total, slot.first_token_max = 0, 0.0, 0.0
        slot.requests += 1
        if request.status >= 400:
            slot.errors += 1
        if (first := request.first_token_seconds) is not None:
            slot.first_tokens += 1
            slot.first_token_total += first
            slot.first_token_max = max(slot.first_token_max, first)

    def requests(self) -> list[dict[str, object]]:
        """The kept requests, newest first."""
        return [request.json() for request in reversed(self._requests)]

    def minutes(self) -> list[dict[str, object]]:
        """The last `MINUTES` minutes, oldest first and the current one last; quiet ones are zeros."""
        now = int(self.clock() // 60)
        figures = []
        for minute in range(now - MINUTES + 1, now + 1):
            slot = self._minutes[minute % MINUTES]
            held = slot.minute == minute
            count = slot.first_tokens if held else 0
            figures.append(
                {
                    "minute": _iso(minute * 60),
                    "requests": slot.requests if held else 0,
                    "errors": slot.errors if held else 0,
                    "first_token_mean": round(slot.first_token_total / count, 3) if count else None,
                    "first_token_max": round(slot.first_token_max, 3) if count else None,
                }
            )
        return figures


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
