"""Which model serves a caller: model names resolved for the caller's key, and the names it may see.

A model with its own API keys is open only to callers presenting one of them.
"""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from bot.config import ModelSettings
from bot.interface import PromptRequest
from bridge_api.appkeys import API_KEY, BACKEND, CONFIG
from bridge_api.bearer import matches_any
from bridge_api.errors import APIError, switches_gateways_off


def resolve_model(request: web.Request, name: str) -> int:
    """The index of the model that serves `name` for this caller, or 404 model_not_found."""
    candidates = _usable_models(request)
    for index, model in candidates:
        if model.name == name:
            return index
    if candidates and request.app[CONFIG].now.settings.api.unknown_model == "first":
        # Prefer a bot this key was given explicitly (coze-discord-proxy's bot_config.json).
        return min(candidates, key=lambda item: not item[1].api_keys)[0]
    raise model_not_found(name)


def model_not_found(name: str) -> APIError:
    """404 model_not_found, naming the model unless its name holds words that make a gateway
    switch the channel off (a caller could pick such a name to have the channel switched off)."""
    named = f"The model '{name}'" if not switches_gateways_off(name) else "The model asked for"
    return APIError(
        404,
        f"{named} does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def pinned(request: web.Request, prompt: PromptRequest) -> PromptRequest:
    """`prompt` routed anew by its model name, against the models in force now.

    Call it right before `backend.complete`, with no await between: a reload while the request
    waited (for its images, or for a stream's headers to go out) may have moved or removed the
    model its first route pointed at, and the backend reads the route when it starts.
    """
    return replace(prompt, route=resolve_model(request, prompt.model))


def visible_models(request: web.Request) -> list[str]:
    """The model names this caller may use, each once, in the configured order."""
    return list(dict.fromkeys(model.name for _, model in _usable_models(request)))


def _usable_models(request: web.Request) -> list[tuple[int, ModelSettings]]:
    """(index, model) of every model this caller's key opens."""
    key = request.get(API_KEY)
    return [(index, model) for index, model in enumerate(request.app[BACKEND].models) if _opens(key, model)]


def _opens(key: str | None, model: ModelSettings) -> bool:
    if not model.api_keys:
        return True
    return matches_any(key, (allowed.get_secret_value().encode() for allowed in model.api_keys))
