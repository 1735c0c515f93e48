"""Which Coze bot answers a request: by model name, limited by per-model API keys."""

from __future__ import annotations

import hmac

from aiohttp import web

from bot.config import ModelSettings
from bridge_api.errors import APIError
from bridge_api.keys import API_KEY, BACKEND, SETTINGS


def usable(model: ModelSettings, key: str | None) -> bool:
    if not model.api_keys:
        return True
    presented = (key or "").encode()
    matched = False
    for allowed in model.api_keys:
        matched |= hmac.compare_digest(presented, allowed.get_secret_value().encode())
    return matched


def resolve_model(request: web.Request, name: str) -> int:
    """The index of the model that serves `name` for this caller, or 404 model_not_found."""
    key = request.get(API_KEY)
    candidates = [
        (index, model) for index, model in enumerate(request.app[BACKEND].models) if usable(model, key)
    ]
    for index, model in candidates:
        if model.name == name:
            return index
    if candidates and request.app[SETTINGS].api.unknown_model == "first":
        # Prefer a bot this key was given explicitly (coze-discord-proxy's bot_config.json).
        return min(candidates, key=lambda item: not item[1].api_keys)[0]
    raise APIError(
        404,
        f"The model '{name}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def visible_models(request: web.Request) -> list[str]:
    key = request.get(API_KEY)
    names = (model.name for model in request.app[BACKEND].models if usable(model, key))
    return list(dict.fromkeys(names))
