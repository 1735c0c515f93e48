"""Typed aiohttp keys for what the app and each request carry (and the accepted bearer keys)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from bot.interface import Backend
from bridge_api.live import LiveConfig
from bridge_api.metrics import Metrics
from bridge_api.outbound import Outbound
from bridge_api.recent import Recent

if TYPE_CHECKING:
    from bridge_api.image_cache import ImageCache

# The settings in force (with the API keys and the rate limiter they make): a reload replaces them.
CONFIG = web.AppKey("config", LiveConfig)
BACKEND: web.AppKey[Backend] = web.AppKey("backend")
METRICS = web.AppKey("metrics", Metrics)
# The guarded client for the images callers link to and the ones Coze's replies name.
HTTP_CLIENT = web.AppKey("http_client", Outbound)
# The last requests and the last hour's per-minute figures, for the status page.
RECENT = web.AppKey("recent", Recent)
# The kept copies of the images in Coze's replies (typed only: bridge_api.image_cache imports this module).
IMAGES: web.AppKey[ImageCache] = web.AppKey("images")
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
# Whether the answer continued a conversation (`Finished.continued`), for the status page.
CONTINUED = web.RequestKey("continued", bool)
# The code of the error a request ended with (in-band ones too), for the status page.
ERROR_CODE = web.RequestKey("error_code", str)
