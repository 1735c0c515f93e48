"""OpenAI-shaped errors, and the mapping from bridge failures and HTTP statuses to them."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from bot.interface import (
    BridgeError,
    ConversationBusy,
    CozeBusy,
    CozeLimited,
    ModelLimited,
    NotReady,
    Overloaded,
    PromptTooLong,
    ReplyTimeout,
    SendFailed,
    ServerShutdown,
    StorageUnavailable,
    UnknownConversation,
    UnknownToken,
    UpstreamError,
)

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
         404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
         429: "rate_limit_exceeded"}  # fmt: skip

BRIDGE_STATUS: dict[type[BridgeError], int] = {
    NotReady: 503,
    SendFailed: 502,
    ReplyTimeout: 504,
    CozeLimited: 429,
    ModelLimited: 429,
    CozeBusy: 503,
    UpstreamError: 502,
    ServerShutdown: 503,
    StorageUnavailable: 503,
    PromptTooLong: 400,
    ConversationBusy: 429,
    Overloaded: 503,
    UnknownToken: 404,
    UnknownConversation: 404,
}
# The request field a bridge failure is about, where it is one.
BRIDGE_PARAM: dict[type[BridgeError], str] = {PromptTooLong: "messages"}
# Words in `error.message` on which one-api or new-api switch a channel off for good (their
# checks differ in case; this one ignores it). The bridge's own messages avoid them, and text it
# does not write (Coze's, a caller's) goes elsewhere when it holds one.
SWITCH_OFF_WORDS = (
    "credit",
    "balance",
    "quota",
    "permission denied",
    "organization has been",
    "access was terminated",
    "violation of our policies",
    "api key not valid",
    "api key expired",
    "security token included in the request is invalid",
    "operation not allowed",
    "account is not authorized",
)


def switches_gateways_off(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in SWITCH_OFF_WORDS)


class APIError(Exception):
    """An error answered as `{"error": {message, type, param, code}}` with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        coze_notice: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        # Coze's own words, outside `message` (which gateways read): see `BridgeError.notice`.
        self.coze_notice = coze_notice

    @property
    def type(self) -> str:
        return TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.coze_notice is not None:
            error["coze_notice"] = self.coze_notice
        return {"error": error}

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            text=json.dumps(self.body()),
            content_type="application/json",
            headers=self.headers,
        )

    @classmethod
    def from_bridge(cls, exc: BridgeError) -> APIError:
        headers: dict[str, str] = {}
        if exc.posted:
            # The prompt already reached Discord: an SDK retry would post it a second time.
            headers["x-should-retry"] = "false"
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return cls(
            BRIDGE_STATUS.get(type(exc), 502),
            exc.message,
            code=exc.code,
            param=BRIDGE_PARAM.get(type(exc)),
            headers=headers,
            coze_notice=exc.notice,
        )

    @classmethod
    def from_http(cls, exc: web.HTTPException) -> APIError:
        codes = {404: "unknown_url", 405: "method_not_allowed", 413: "request_too_large"}
        messages = {
            404: "Unknown request URL. Try POST /v1/chat/completions or GET /v1/models.",
            405: f"Method not allowed. Allowed: {exc.headers.get('Allow', 'see the docs')}.",
            413: "Request body too large.",
        }
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return cls(
            exc.status, messages.get(exc.status, exc.reason), code=codes.get(exc.status), headers=headers
        )


def server_error() -> APIError:
    return APIError(500, "The bridge failed unexpectedly; see its log.", code="server_error")


def invalid_body(exc: ValidationError) -> APIError:
    """A 400 naming the first bad field of a request body, in OpenAI's `param` style."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    if first["loc"] and first["loc"][-1] == "str":
        # A union tried as a string first: the deepest error of the same field says more.
        prefix = first["loc"][:-1]
        first = max((e for e in errors if e["loc"][: len(prefix)] == prefix), key=lambda e: len(e["loc"]))
    param = _param(first["loc"])
    return APIError(400, f"Invalid '{param}': {first['msg']}.", code="invalid_value", param=param)


def _param(loc: tuple[int | str, ...]) -> str:
    # Drop pydantic's union branch names ("str", "list[...]", "ImageURL", and the part type
    # right after a list index) from the path.
    out = ""
    after_index = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            after_index = True
            continue
        if not (
            part in ("str", "ImageURL") or "[" in part or (after_index and part in ("text", "image_url"))
        ):
            out += f".{part}" if out else part
        after_index = False
    return out or "body"
