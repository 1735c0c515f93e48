"""The port's reports: what the backend says of itself (the pool, the models, the queue, the
gateway and the bridges sharing its database), as /v1/status, /admin, the status page, /readyz
and /metrics show it. Part of the port, beside `bot.interface`."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal


class BridgeState(enum.Enum):
    """Where the bridge is in its life; readiness, metrics and logs all read this."""

    STARTING = "starting"
    CONNECTING = "connecting"
    READY = "ready"
    DEGRADED = "degraded"
    STOPPING = "stopping"


class TokenState(enum.Enum):
    HEALTHY = "healthy"
    RESTING = "resting"  # every Coze bot it serves gave it the daily-limit notice
    CAPPED = "capped"  # it made its daily_cap posts; back at accounts.reset_at
    INVALID = "invalid"  # Discord refused it (401, or 403 "verify your account")
    DISABLED = "disabled"  # turned off: `enabled = false`, or PATCH /admin/tokens/{id}
    RETIRING = "retiring"  # gone from the settings; finishing its prompts in flight, taking no new


@dataclass(frozen=True, slots=True)
class TokenReport:
    """A user token as /v1/status and /admin/tokens show it (the pool's view, masked)."""

    id: str  # the admin endpoints' id: the token's fingerprint (16 hex digits), never the token
    label: str  # its `label`, or "user token #N"
    state: TokenState
    since: datetime | None  # when it entered `state` (None: healthy since start)
    reason: str | None  # why it is not healthy (a disable reason is persisted)
    resting_until: datetime | None  # resting or capped: when it can post again
    resting_models: dict[str, datetime]
    in_flight: int  # prompts awaiting Coze now, from every bridge sharing the pool
    max_in_flight: int
    posts_today: int
    daily_cap: int | None
    # Bridge (instance.name) -> its prompts in flight with the token, when any; bridges
    # sharing a database show each other's. Alone: empty, and all of `in_flight` is its own.
    holders: Mapping[str, int] = field(default_factory=dict)
    here: str = ""  # this bridge's instance.name

    @property
    def in_flight_here(self) -> int:
        """This bridge's share of `in_flight` (what /metrics counts: Prometheus adds them up)."""
        return self.holders.get(self.here, 0) if self.holders else self.in_flight

    @property
    def masked(self) -> str:
        return f"{self.label} ({self.id[:8]})"


@dataclass(frozen=True, slots=True)
class ModelStatus:
    name: str
    resting_until: datetime | None
    # Tokens that can post for this model now or after a wait in the queue (healthy, not resting
    # for its Coze bot, not capped): 0 means the pool is empty for it.
    tokens_available: int = 0


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """The pool's FIFO of requests waiting for a free token."""

    length: int = 0
    limit: int = 0
    # Since when a request was refused for a full queue (None: not full since the queue last drained).
    full_since: datetime | None = None


# Where the operator turns the listener bot's Message Content intent on (the logs and /readyz say it).
MESSAGE_CONTENT_SWITCH = (
    "Developer Portal → your application → Bot → Privileged Gateway Intents → Message Content Intent"
)

# How the bridge found out: Coze's messages arrive empty, or Discord closed the gateway (4014).
IntentEvidence = Literal["blank_messages", "gateway_refused"]


@dataclass(frozen=True, slots=True)
class IntentMissing:
    """The listener bot cannot read message content: since when, and how that was seen."""

    since: datetime
    seen_as: IntentEvidence


@dataclass(frozen=True, slots=True)
class InstanceReport:
    """A bridge sharing the database, as /v1/status shows it."""

    name: str
    started: datetime
    seen: datetime  # its last heartbeat
    leader: bool  # it runs the housekeeping


@dataclass(frozen=True, slots=True)
class BackendStatus:
    state: BridgeState
    open_replies: int
    tokens: tuple[TokenReport, ...]
    models: tuple[ModelStatus, ...]
    # None while the Message Content intent works (or nothing says otherwise yet).
    intent_missing: IntentMissing | None = None
    queue: QueueStatus = QueueStatus()
    # When `state` last changed (None: not known, e.g. the mock).
    state_since: datetime | None = None
    # This bridge's instance.name, and every live bridge sharing its database (itself included).
    instance: str = ""
    instances: tuple[InstanceReport, ...] = ()
    # False while the database cannot be reached (new requests get storage_unavailable).
    storage_available: bool = True
