"""Discord-shaped REST responses and errors."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

# Discord's JSON error codes for the failures the simulation reproduces.
UNKNOWN_CHANNEL = 10003
UNKNOWN_MESSAGE = 10008
UNAUTHORIZED = 40001
VERIFICATION_REQUIRED = 40002
MISSING_ACCESS = 50001
CANNOT_EDIT_OTHERS = 50005
EMPTY_MESSAGE = 50006
MISSING_PERMISSIONS = 50013
INVALID_FORM_BODY = 50035
INVALID_JSON = 50109


def reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses a body as JSON only when Content-Type is exactly "application/json";
    # aiohttp's json_response appends "; charset=utf-8".
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


class DiscordError(Exception):
    """Raised by a route to answer with Discord's error shape {"message", "code"}."""

    def __init__(self, status: int, message: str, code: int = 0, errors: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.errors = errors

    def response(self) -> web.Response:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return reply(body, self.status)


def invalid_field(name: str, message: str, code: str = "BASE_TYPE_BAD") -> DiscordError:
    # Discord nests field errors as {"errors": {field: {"_errors": [{"code", "message"}]}}}.
    errors = {name: {"_errors": [{"code": code, "message": message}]}}
    return DiscordError(400, "Invalid Form Body", INVALID_FORM_BODY, errors)


def unknown_channel() -> DiscordError:
    return DiscordError(404, "Unknown Channel", UNKNOWN_CHANNEL)


def unknown_message() -> DiscordError:
    return DiscordError(404, "Unknown Message", UNKNOWN_MESSAGE)


def unauthorized() -> DiscordError:
    return DiscordError(401, "401: Unauthorized", 0)


def rate_limited(retry_after: float) -> web.Response:
    # A 429 without a Via header looks to discord.py like a Cloudflare ban, which it raises
    # instead of retrying; real API rate limits come through Google's front end.
    body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
    headers = {
        "Retry-After": str(max(1, round(retry_after))),
        "Via": "1.1 google",
        "X-RateLimit-Scope": "user",
    }
    return reply(body, 429, headers)
