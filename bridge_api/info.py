"""Models, liveness and readiness."""

from __future__ import annotations

import time

from aiohttp import web

from bot.interface import BridgeState
from bridge_api.errors import APIError
from bridge_api.keys import BACKEND

# OpenAI's model objects carry a creation time; ours is when the process started.
STARTED = int(time.time())


def _model(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": STARTED, "owned_by": "coze-discord-bridge"}


async def list_models(request: web.Request) -> web.Response:
    models = request.app[BACKEND].models
    return web.json_response({"object": "list", "data": [_model(m) for m in models]})


async def get_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model_id"]
    if model_id not in request.app[BACKEND].models:
        raise APIError(404, f"The model '{model_id}' does not exist.", code="model_not_found", param="model")
    return web.json_response(_model(model_id))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[BACKEND].state
    if state is BridgeState.READY:
        return web.json_response({"status": state.value})
    return web.json_response({"status": state.value}, status=503, headers={"Retry-After": "5"})
