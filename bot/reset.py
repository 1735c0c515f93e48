"""When Coze's daily quotas reset: a time of day in a time zone (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_PATTERN = re.compile(r"\s*(\d{1,2}):(\d{2})\s*(\S+)?\s*")
_OFFSET = re.compile(r"(?:UTC|GMT)?([+-])(\d{1,2})(?::?(\d{2}))?")


@dataclass(frozen=True, slots=True)
class ResetTime:
    hour: int
    minute: int
    zone: tzinfo
    zone_name: str

    @classmethod
    def parse(cls, text: str) -> ResetTime:
        match = _PATTERN.fullmatch(text)
        if match is None:
            raise ValueError("expected 'HH:MM' and a time zone, e.g. '00:00 UTC' or '09:00 Asia/Shanghai'")
        hour, minute, name = int(match[1]), int(match[2]), match[3] or "UTC"
        if hour > 23 or minute > 59:
            raise ValueError(f"{hour:02}:{minute:02} is not a time of day")
        return cls(hour, minute, _zone(name), name)

    def next_after(self, now: datetime) -> datetime:
        """The first reset strictly after `now` (an aware datetime)."""
        local = now.astimezone(self.zone)
        candidate = local.replace(hour=self.hour, minute=self.minute, second=0, microsecond=0)
        if candidate <= local:
            # Add a calendar day in local time, then rebuild, so DST changes keep the wall time.
            tomorrow = (local + timedelta(days=1)).date()
            candidate = datetime(
                tomorrow.year, tomorrow.month, tomorrow.day, self.hour, self.minute, tzinfo=self.zone
            )
        return candidate

    def last_at_or_before(self, now: datetime) -> datetime:
        """The most recent reset: where "today" began for per-day counters."""
        return self.next_after(now) - timedelta(days=1)

    def __str__(self) -> str:
        return f"{self.hour:02}:{self.minute:02} {self.zone_name}"


def _zone(name: str) -> tzinfo:
    if name.upper() in ("UTC", "GMT", "Z"):
        return UTC
    if offset := _OFFSET.fullmatch(name):
        sign = -1 if offset[1] == "-" else 1
        delta = timedelta(hours=int(offset[2]), minutes=int(offset[3] or 0))
        if delta > timedelta(hours=14):
            raise ValueError(f"{name} is not a UTC offset")
        return timezone(sign * delta)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None
