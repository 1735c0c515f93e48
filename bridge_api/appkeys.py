"""Typed aiohttp keys for what the app and each request carry (and the accepted bearer keys)."""

from __future__ import annotations

from aiohttp import web

from bot.interface import Backend
from bridge_api.live import LiveConfig
from bridge_api.metrics import Metrics
from bridge_api.outbound import Outbound

# The settings in force (with the API keys and the rate limiter they make): a reload replaces them.
CONFIG = web.AppKey("config", LiveConfig)
BACKEND: web.AppKey[Backend] = web.AppKey("backend")
METRICS = web.AppKey("metrics", Metrics)
# The guarded client for the images callers link to and the ones Coze's replies name.
HTTP_CLIENT = web.AppKey("http_client", Outbound)
REQUEST_ID = web.RequestKey("request_id", str)
# The API key the caller presented, if any (per-model keys decide which models it may use).
API_KEY = web.RequestKey("api_key", str)
# The status of an error reported inside a stream that had already answered 200.
IN_BAND_ERROR = web.RequestKey("in_band_error", int)
STARTED = web.RequestKey("started", float)
MODEL = web.RequestKey("model", str)
FIRST_TOKEN = web.RequestKey("first_token", float)
# The estimated token counts of an answered completion, for the access line.
USAGE: web.RequestKey[dict[str, int]] = web.RequestKey("usage")
