"""Models, liveness, readiness, status and the Prometheus scrape."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.status import MESSAGE_CONTENT_SWITCH, BridgeState, IntentMissing, TokenReport, TokenState
from bridge_api.appkeys import BACKEND, CONFIG, METRICS
from bridge_api.model_access import model_not_found, visible_models

# OpenAI's model objects carry a creation time; ours is when the process started.
STARTED = int(time.time())


def _model(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": STARTED, "owned_by": "coze-discord-bridge"}


def _listed(request: web.Request) -> list[str]:
    """The caller's models, then the health model (any key may use it), each once."""
    names = visible_models(request)
    if health := request.app[CONFIG].now.settings.api.health_model:
        names.append(health)
    return list(dict.fromkeys(names))


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [_model(name) for name in _listed(request)]})


async def get_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model_id"]
    if model_id not in _listed(request):
        raise model_not_found(model_id)
    return web.json_response(_model(model_id))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    backend_status = request.app[BACKEND].status()
    state = backend_status.state
    if backend_status.intent_missing is not None:
        # Even a connected gateway is no use: Coze's replies arrive without their text.
        body = {"status": state.value, "reason": "message_content_intent", "fix": MESSAGE_CONTENT_SWITCH}
        return web.json_response(body, status=503, headers={"Retry-After": "5"})
    if not backend_status.storage_available:
        # The database other bridges share is away: new requests would only get 503s here.
        body = {"status": state.value, "reason": "storage_unavailable"}
        return web.json_response(body, status=503, headers={"Retry-After": "5"})
    if state is BridgeState.READY:
        return web.json_response({"status": state.value})
    return web.json_response({"status": state.value}, status=503, headers={"Retry-After": "5"})


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


def _intents(missing: IntentMissing | None) -> dict[str, str | None]:
    if missing is None:
        return {"message_content": "ok", "since": None, "seen_as": None}
    return {"message_content": "missing", "since": _iso(missing.since), "seen_as": missing.seen_as}


def token_json(token: TokenReport) -> dict[str, object]:
    """A user token as /v1/status and /admin/tokens show it: masked, never the token."""
    return {
        "id": token.id,
        "label": token.label,
        "state": token.state.value,
        "since": _iso(token.since),
        "reason": token.reason,
        "resting_until": _iso(token.resting_until),
        "resting_models": {name: _iso(until) for name, until in token.resting_models.items()},
        "in_flight": token.in_flight,
        "max_in_flight": token.max_in_flight,
        "posts_today": token.posts_today,
        "daily_cap": token.daily_cap,
        "holders": dict(token.holders),
    }


async def status(request: web.Request) -> web.Response:
    """GET /v1/status: the token pool, the models, the gateway and what is in flight."""
    backend_status = request.app[BACKEND].status()
    registry = request.app[METRICS].registry
    queue = backend_status.queue
    body = {
        "state": backend_status.state.value,
        "state_since": _iso(backend_status.state_since),
        "open_streams": int(registry.get_sample_value("coze_bridge_open_streams") or 0),
        "open_replies": backend_status.open_replies,
        "tokens": [token_json(token) for token in backend_status.tokens],
        "models": [
            {
                "name": model.name,
                "resting_until": _iso(model.resting_until),
                "tokens_available": model.tokens_available,
            }
            for model in backend_status.models
        ],
        "queue": {"length": queue.length, "limit": queue.limit, "full_since": _iso(queue.full_since)},
        "intents": _intents(backend_status.intent_missing),
        "instance": backend_status.instance,
        "storage": "ok" if backend_status.storage_available else "unavailable",
        "instances": [
            {
                "name": instance.name,
                "started": _iso(instance.started),
                "seen": _iso(instance.seen),
                "leader": instance.leader,
            }
            for instance in backend_status.instances
        ],
    }
    return web.json_response(body)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """GET /metrics: the gauges that mirror the backend are set at scrape time, then all is rendered."""
    metrics = request.app[METRICS]
    backend_status = request.app[BACKEND].status()
    for state in BridgeState:
        metrics.gateway_state.labels(state.value).set(1 if state is backend_status.state else 0)
    states = Counter(token.state for token in backend_status.tokens)
    for token_state in TokenState:
        metrics.tokens.labels(token_state.value).set(states[token_state])
    metrics.queue_length.set(backend_status.queue.length)
    # Cleared first, so a token gone from the settings leaves no stale series behind. Tokens
    # sharing a label add up under it.
    in_flight = Counter[str]()
    for token in backend_status.tokens:
        in_flight[token.label] += token.in_flight_here  # Prometheus adds up the instances
    metrics.token_in_flight.clear()
    for label, count in in_flight.items():
        metrics.token_in_flight.labels(label).set(count)
    return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
