"""The admin endpoints: the token pool's tokens, turning one off or on, checking one, a reload.

They open only to `api.admin_keys`, never to a caller's key (and an admin key is no caller key):
as `Authorization: Bearer <key>`, or HTTP Basic with any user name and the key as the password,
which is what a browser's login prompt sends. Without admin keys they answer 403 naming the
setting: the endpoints exist in every build, so hiding them behind a 404 would only puzzle
an operator. They are not counted against `api.rate_limit_per_minute`, which is for callers.
"""

from __future__ import annotations

import functools
import logging

from aiohttp import BasicAuth, web
from pydantic import BaseModel, ConfigDict, StrictBool

from bot.interface import BridgeError
from bot.status import TokenReport
from bridge_api.appkeys import BACKEND, CONFIG
from bridge_api.bearer import matches_any
from bridge_api.chat import read_json
from bridge_api.errors import APIError
from bridge_api.info import token_json
from bridge_api.middleware import Handler
from bridge_api.schemas import parse_body
from bridge_api.settings import ConfigError

log = logging.getLogger(__name__)

# What a browser shows in its login prompt, and asks again for after a wrong key.
CHALLENGE = 'Basic realm="coze-bridge admin"'


class TokenPatch(BaseModel):
    """PATCH /admin/tokens/{id}: exactly `{"enabled": true|false}`."""

    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool


def presented_admin_key(request: web.Request) -> str | None:
    """The key from `Authorization: Bearer <key>`, or the password of `Authorization: Basic`."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer":
        return given.strip() or None
    if scheme.lower() == "basic":
        try:
            return BasicAuth.decode(header, encoding="utf-8").password or None
        except ValueError:
            return None  # not base64, no colon, or not UTF-8: no key at all
    return None


def require_admin(request: web.Request) -> None:
    """403 when the admin endpoints are off, 401 (with the Basic challenge) for a wrong key."""
    accepted = request.app[CONFIG].now.admin_keys
    if not accepted:
        raise APIError(
            403,
            "The admin endpoints are off: set api.admin_keys to turn them on.",
            code="admin_disabled",
        )
    if not matches_any(presented_admin_key(request), accepted):
        raise APIError(
            401,
            "Invalid or missing admin key. Send it as 'Authorization: Bearer <key>', "
            "or as the password of HTTP Basic auth.",
            code="invalid_admin_key",
            headers={"WWW-Authenticate": CHALLENGE},
        )


def admin_only(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        require_admin(request)
        return await handler(request)

    return guarded


@admin_only
async def list_tokens(request: web.Request) -> web.StreamResponse:
    """GET /admin/tokens: every user token, as /v1/status shows it."""
    return web.json_response(
        {"tokens": [token_json(token) for token in request.app[BACKEND].status().tokens]}
    )


@admin_only
async def patch_token(request: web.Request) -> web.StreamResponse:
    """PATCH /admin/tokens/{id}: turn a token off or on (persisted); answers the token as it is now."""
    patch = parse_body(TokenPatch, await read_json(request))
    try:
        token = request.app[BACKEND].set_token_enabled(request.match_info["token_id"], patch.enabled)
    except BridgeError as exc:
        raise APIError.from_bridge(exc) from None
    log.info("admin: %s %s", token.masked, "enabled" if patch.enabled else "disabled")
    return _token(token)


@admin_only
async def check_token(request: web.Request) -> web.StreamResponse:
    """POST /admin/tokens/{id}/check: ask Discord about the token now (nothing is posted)."""
    try:
        token = await request.app[BACKEND].check_token(request.match_info["token_id"])
    except BridgeError as exc:
        raise APIError.from_bridge(exc) from None
    log.info("admin: checked %s: %s", token.masked, token.state.value)
    return _token(token)


@admin_only
async def reload(request: web.Request) -> web.StreamResponse:
    """POST /admin/reload: what SIGHUP does; 400 with the reason when the settings are invalid."""
    try:
        waiting = request.app[CONFIG].reload(request.app[BACKEND])
    except ConfigError as exc:
        raise APIError(400, str(exc), code="invalid_settings") from None
    return web.json_response({"reloaded": True, "restart_needed": waiting})


def _token(token: TokenReport) -> web.Response:
    return web.json_response(token_json(token))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/tokens", list_tokens)
    app.router.add_patch("/admin/tokens/{token_id}", patch_token)
    app.router.add_post("/admin/tokens/{token_id}/check", check_token)
    app.router.add_post("/admin/reload", reload)
