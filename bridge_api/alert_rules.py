"""What the alerts say and when: the open conditions in a `BackendStatus`, and the throttle.

No I/O here; time comes in as arguments (a monotonic reading for the throttle, the wall clock
for what the messages say), so the rules are stepped by hand in tests.

Throttle: at most one alert and one `resolved` per kind in `alerts.min_interval_minutes`.
Conditions of one kind that open while its alert is held back (a second token invalid) are
folded into the kind's next allowed alert, if they are still open then; one that clears
before that is never named, and gets no `resolved` either.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from bot.status import (
    MESSAGE_CONTENT_SWITCH,
    BackendStatus,
    BridgeState,
    ModelStatus,
    TokenReport,
    TokenState,
)

log = logging.getLogger(__name__)

Kind = Literal["pool_empty", "token_invalid", "gateway_down", "model_resting", "queue_full", "intent_missing"]
KINDS: tuple[Kind, ...] = get_args(Kind)
Severity = Literal["critical", "warning", "info"]
# Critical: no request can be answered (for a model, or at all). Without the intent every reply
# comes back blank, so it counts as critical too.
SEVERITY: dict[Kind, Severity] = {
    "pool_empty": "critical",
    "token_invalid": "warning",
    "gateway_down": "critical",
    "model_resting": "warning",
    "queue_full": "warning",
    "intent_missing": "critical",
}
EVIDENCE = {
    "blank_messages": "Coze's messages arrive blank",
    "gateway_refused": "Discord closed the gateway with 4014",
}


@dataclass(frozen=True, slots=True)
class Condition:
    """One open problem: `key` tells apart those of one kind (a model's name, a token's id)."""

    kind: Kind
    key: str
    message: str
    cleared: str  # what the `resolved` message says once it is gone
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Alert:
    """One message to send: the conditions of one kind that opened, or that cleared."""

    kind: Kind
    resolved: bool
    message: str
    details: tuple[dict[str, Any], ...]
    at: datetime

    @property
    def severity(self) -> Severity:
        return "info" if self.resolved else SEVERITY[self.kind]


def when(moment: datetime, now: datetime) -> str:
    """`moment` as HH:MM UTC, with the date unless it is today or within the next day."""
    moment = moment.astimezone(now.tzinfo)
    if moment.date() == now.date() or timedelta(0) < moment - now < timedelta(days=1):
        return moment.strftime("%H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _why_not(token: TokenReport, model: str) -> tuple[str, datetime | None]:
    """Why `token` cannot post for `model` (a word, and until when if it is known)."""
    resting = token.resting_models.get(model)
    if token.state is TokenState.RESTING and resting is None:
        resting = token.resting_until
    if token.state in (TokenState.HEALTHY, TokenState.RESTING) and resting is not None:
        return "resting", resting
    if token.state is TokenState.CAPPED:
        return "capped", token.resting_until
    return token.state.value, None


def pool_empty(model: ModelStatus, tokens: tuple[TokenReport, ...], now: datetime) -> Condition:
    reasons = [_why_not(token, model.name) for token in tokens]
    counts = Counter(word if until is None else f"{word} until {when(until, now)}" for word, until in reasons)
    summary = ", ".join(f"{count} {what}" for what, count in counts.items()) or "none is configured"
    return Condition(
        "pool_empty",
        model.name,
        f"No user token can post for model {model.name!r}: {summary}",
        f"User tokens can post for model {model.name!r} again",
        {
            "model": model.name,
            "tokens": [
                {"token": token.id[:8], "label": token.label, "state": word, "until": _iso(until)}
                for token, (word, until) in zip(tokens, reasons, strict=True)
            ],
        },
    )


def token_invalid(token: TokenReport) -> Condition:
    reason = f": {token.reason}" if token.reason else ""
    return Condition(
        "token_invalid",
        token.id,
        f"{token.masked} is invalid{reason}",
        f"{token.masked} is no longer invalid",
        {"token": token.id[:8], "label": token.label, "reason": token.reason, "since": _iso(token.since)},
    )


def gateway_down(state: BridgeState, since: datetime, now: datetime) -> Condition:
    seconds = (now - since).total_seconds()
    return Condition(
        "gateway_down",
        "",
        f"The Discord gateway has been down for {duration(seconds)} (since {when(since, now)}; "
        f"the bridge is {state.value})",
        "The Discord gateway is back",
        {"state": state.value, "since": _iso(since), "down_seconds": round(seconds)},
    )


def model_resting(model: ModelStatus, until: datetime, now: datetime) -> Condition:
    return Condition(
        "model_resting",
        model.name,
        f"Model {model.name!r} is resting until {when(until, now)}: its Coze bot's owner ran out of credits",
        f"Model {model.name!r} is no longer resting",
        {"model": model.name, "until": _iso(until)},
    )


def queue_full(status: BackendStatus, since: datetime, now: datetime) -> Condition:
    queue = status.queue
    return Condition(
        "queue_full",
        "",
        f"The request queue is full since {when(since, now)}: {queue.length} of {queue.limit} places "
        "taken, further requests are refused with 503 overloaded",
        "The request queue has room again",
        {"length": queue.length, "limit": queue.limit, "since": _iso(since)},
    )


def intent_missing(status: BackendStatus, now: datetime) -> Condition | None:
    missing = status.intent_missing
    if missing is None:
        return None
    return Condition(
        "intent_missing",
        "",
        f"The listener bot cannot read message content since {when(missing.since, now)} "
        f"({EVIDENCE.get(missing.seen_as, missing.seen_as)}): turn on {MESSAGE_CONTENT_SWITCH}",
        "The listener bot reads message content again",
        {"seen_as": missing.seen_as, "since": _iso(missing.since)},
    )


def open_conditions(
    status: BackendStatus, now: datetime, *, down_since: datetime | None, down_seconds: float
) -> list[Condition]:
    """Every condition open in `status`; the gateway counts as down once it has been away
    `down_seconds` since `down_since`."""
    found: list[Condition] = []
    for model in status.models:
        if model.tokens_available == 0:
            found.append(pool_empty(model, status.tokens, now))
        if model.resting_until is not None:
            found.append(model_resting(model, model.resting_until, now))
    found.extend(token_invalid(token) for token in status.tokens if token.state is TokenState.INVALID)
    if down_since is not None and (now - down_since).total_seconds() >= down_seconds:
        found.append(gateway_down(status.state, down_since, now))
    if status.queue.full_since is not None:
        found.append(queue_full(status, status.queue.full_since, now))
    if (intent := intent_missing(status, now)) is not None:
        found.append(intent)
    return found


@dataclass
class _KindBook:
    """What one kind's messages have said so far."""

    kind: Kind
    named: dict[str, Condition] = field(default_factory=dict)  # open, and named by an alert
    cleared: dict[str, Condition] = field(default_factory=dict)  # named, gone, `resolved` not yet sent
    held: dict[str, Condition] = field(default_factory=dict)  # open, not named: the throttle held them
    last_alert: float | None = None
    last_resolved: float | None = None

    def update(
        self, opened: dict[str, Condition], interval: float, mono: float, now: datetime
    ) -> list[Alert]:
        alerts: list[Alert] = []
        for key in [key for key in self.named if key not in opened]:
            self.cleared[key] = self.named.pop(key)
        # Back before its `resolved` went out: as far as the receiver knows it never left.
        for key in [key for key in self.cleared if key in opened]:
            del self.cleared[key]
            self.named[key] = opened[key]
        self.named = {key: opened[key] for key in self.named}  # the latest words for each
        for key in [key for key in self.held if key not in opened]:
            gone = self.held.pop(key)
            log.info("alert %s cleared before the throttle let it out: %s", self.kind, gone.message)
        new = [condition for key, condition in opened.items() if key not in self.named]
        if new and _allowed(self.last_alert, interval, mono):
            alerts.append(_alert(self.kind, False, new, now))
            self.named.update((condition.key, condition) for condition in new)
            self.held.clear()
            self.last_alert = mono
        for condition in new:
            if condition.key not in self.named and condition.key not in self.held:
                self.held[condition.key] = condition
                log.info(
                    "alert %s held back by alerts.min_interval_minutes: %s", self.kind, condition.message
                )
        if self.cleared and _allowed(self.last_resolved, interval, mono):
            alerts.append(_alert(self.kind, True, list(self.cleared.values()), now))
            self.cleared.clear()
            self.last_resolved = mono
        return alerts


def _allowed(last: float | None, interval: float, mono: float) -> bool:
    return last is None or mono - last >= interval


def _alert(kind: Kind, resolved: bool, conditions: list[Condition], now: datetime) -> Alert:
    lines = [condition.cleared if resolved else condition.message for condition in conditions]
    return Alert(kind, resolved, "\n".join(lines), tuple(condition.details for condition in conditions), now)


class Alerter:
    """Turns successive statuses into the alerts to send, throttled per kind."""

    def __init__(self) -> None:
        self._books = {kind: _KindBook(kind) for kind in KINDS}
        self._down_since: datetime | None = None

    def update(
        self, status: BackendStatus, *, mono: float, now: datetime, interval: float, down_seconds: float
    ) -> list[Alert]:
        """The alerts `status` calls for at `mono` (monotonic seconds) and `now` (UTC)."""
        if status.state is BridgeState.STOPPING:
            return []  # shutting down on purpose: neither an outage nor a recovery
        if status.state is BridgeState.READY:
            self._down_since = None
        elif self._down_since is None:
            # Down since the state changed, if the backend says when; else since seen down.
            self._down_since = status.state_since or now
        conditions = open_conditions(status, now, down_since=self._down_since, down_seconds=down_seconds)
        alerts: list[Alert] = []
        for kind, book in self._books.items():
            opened = {condition.key: condition for condition in conditions if condition.kind == kind}
            alerts.extend(book.update(opened, interval, mono, now))
        return alerts
