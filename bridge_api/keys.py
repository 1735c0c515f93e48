"""Typed keys for what the app and each request carry."""

from __future__ import annotations

from aiohttp import web

from bot.interface import Backend
from bridge_api.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
BACKEND: web.AppKey[Backend] = web.AppKey("backend")
REQUEST_ID = web.RequestKey("request_id", str)
# The status of an error reported inside a stream that had already answered 200.
IN_BAND_ERROR = web.RequestKey("in_band_error", int)
