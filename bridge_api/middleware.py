"""Request ids, CORS, bearer keys, error mapping and the one log line per request."""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from bridge_api.appkeys import (
    API_KEY,
    CONFIG,
    CONTINUED,
    ERROR_CODE,
    FIRST_TOKEN,
    IN_BAND_ERROR,
    METRICS,
    MODEL,
    RECENT,
    REQUEST_ID,
    STARTED,
    USAGE,
)
from bridge_api.bearer import matches_any, presented_key
from bridge_api.errors import APIError, server_error
from bridge_api.logs import current_request_id
from bridge_api.recent import Served

log = logging.getLogger("coze_bridge.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Routes anyone may call: a kept image's unguessable name is its key (bridge_api.image_cache).
OPEN_ROUTES = frozenset({"/images/{name}"})
# Behind admin keys of their own (bridge_api.admin): caller keys neither open nor are needed there,
# and no other origin may read them.
ADMIN_PREFIX = "/admin/"
# The status page (bridge_api.page), behind the admin keys too; its files and data are under ADMIN_PREFIX.
PAGE_PATH = "/"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
CORS_METHODS = "GET, POST, DELETE, OPTIONS"  # DELETE: /v1/conversations/{id}
# A caller's path or model name, as logged: no forged log lines, no megabyte lines.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
LOGGED_CHARS = 200
# What the log and metrics say of a request whose client left before its end (nginx's 499).
CLIENT_GONE = 499


@web.middleware
async def bridge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = incoming if SANE_REQUEST_ID.fullmatch(incoming) else f"req_{uuid.uuid4().hex}"
    # Every line logged while handling the request carries its id, the backend's lines too.
    context = current_request_id.set(request[REQUEST_ID])
    try:
        return await _handle(request, handler)
    finally:
        current_request_id.reset(context)


async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = request[STARTED] = time.perf_counter()
    response: web.StreamResponse
    try:
        if _is_preflight(request):
            response = web.Response(status=204)
        else:
            _check_key(request)
            _check_form(request)
            response = await handler(request)
    except APIError as exc:
        response = _failed(request, exc)
    except web.HTTPException as exc:
        response = _failed(request, APIError.from_http(exc))
    except ConnectionResetError:
        # The client went away mid-response: nothing more can be written, nothing failed here.
        _record(request, CLIENT_GONE, started)
        raise
    except Exception:
        log.exception("request failed")
        response = _failed(request, server_error())
    _record(request, request.get(IN_BAND_ERROR, response.status), started)
    return response


def _failed(request: web.Request, error: APIError) -> web.Response:
    if error.code is not None:
        request[ERROR_CODE] = error.code
    return error.response()


def loggable(text: str) -> str:
    """A caller's text fit for one log line: control characters escaped, cut to a sane length."""
    text = CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)
    return text if len(text) <= LOGGED_CHARS else text[:LOGGED_CHARS] + "..."


def _record(request: web.Request, status: int, started: float) -> None:
    """The request's metrics and its one log line."""
    elapsed = time.perf_counter() - started
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics = request.app[METRICS]
    metrics.requests.labels(route, str(status)).inc()
    metrics.duration.labels(route).observe(elapsed)
    first = request.get(FIRST_TOKEN)
    to_first = round(first - started, 3) if first is not None else None
    path = loggable(request.path)
    model = loggable(request[MODEL]) if MODEL in request else None
    key = key_fingerprint(request[API_KEY]) if API_KEY in request else None
    fields = {
        "method": request.method,
        "path": path,
        "status": status,
        "model": model if model is not None else "-",
        "key": key or "-",
        "first_token_seconds": to_first,
        "duration_seconds": round(elapsed, 3),
        # Estimated like the usage the response reports (None for requests without an answer).
        "prompt_tokens": counts["prompt_tokens"] if (counts := request.get(USAGE)) else None,
        "completion_tokens": counts["completion_tokens"] if counts else None,
    }
    # Text shows the fields in the line; JSON also carries each as its own field.
    log.info(
        "%(method)s %(path)s %(status)s model=%(model)s key=%(key)s first_token=%(first)s "
        "duration=%(duration)s tokens=%(tokens)s",
        fields
        | {
            "first": f"{to_first:.3f}s" if to_first is not None else "-",
            "duration": f"{elapsed:.3f}s",
            "tokens": f"{counts['prompt_tokens']}+{counts['completion_tokens']}" if counts else "-",
        },
        extra=fields,
    )
    if not _is_operator_request(request):
        recent = request.app[RECENT]
        recent.record(
            Served(
                at=recent.clock(),
                method=request.method,
                path=path,
                status=status,
                code=request.get(ERROR_CODE),
                key=key,
                model=model,
                first_token_seconds=to_first,
                duration_seconds=round(elapsed, 3),
                continued=request.get(CONTINUED),
            )
        )


def _is_operator_request(request: web.Request) -> bool:
    # The status page's own polling, probes and scrapes would push the callers' requests out.
    # So would the images that answers link to, fetched by whoever reads them.
    return (
        is_admin_route(request)
        or request.path in OPEN_PATHS
        or _is_open_route(request)
        or _is_preflight(request)
    )


def key_fingerprint(key: str) -> str:
    """A short id for an API key, to tell callers apart in the log without revealing the key."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]


async def add_common_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: runs for every response, streams included, before headers go out."""
    if REQUEST_ID in request:
        response.headers["x-request-id"] = request[REQUEST_ID]
    origin = _allowed_origin(request)
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = "x-request-id, x-should-retry, retry-after"
    if origin != "*":
        response.headers["Vary"] = "Origin"
    if _is_preflight(request):
        response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        # The openai SDK adds x-stainless-* headers: echo whatever the browser asks for.
        if wanted := request.headers.get("Access-Control-Request-Headers"):
            response.headers["Access-Control-Allow-Headers"] = wanted
        response.headers["Access-Control-Max-Age"] = "600"


def is_admin_route(request: web.Request) -> bool:
    # The route matched, not the raw path, which could be made to start with the prefix.
    resource = request.match_info.route.resource
    return resource is not None and (
        resource.canonical.startswith(ADMIN_PREFIX) or resource.canonical == PAGE_PATH
    )


def _is_open_route(request: web.Request) -> bool:
    # The route matched, as for the admin routes: "/images/generations" stays behind the keys.
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical in OPEN_ROUTES


def _is_preflight(request: web.Request) -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def _allowed_origin(request: web.Request) -> str | None:
    config = request.app[CONFIG].now
    api = config.settings.api
    if not config.keys and not api.allow_no_auth:
        return None  # without keys, no web page may read what the bridge answers
    if is_admin_route(request) or request.path.startswith(ADMIN_PREFIX):
        return None  # a page of the bridge's own origin needs no CORS to reach them
    origins = api.cors_origins
    if "*" in origins:
        return "*"
    origin = request.headers.get("Origin")
    return origin if origin in origins else None


def _check_form(request: web.Request) -> None:
    # A page may POST text/plain or a form to any address without a preflight; the browser sends
    # its Origin. JSON is what every real client sends, and it cannot come without a preflight.
    if (
        request.method == "POST"
        and "Origin" in request.headers
        and request.content_type != "application/json"
    ):
        raise APIError(
            415,
            "Requests from a browser must send their body as application/json.",
            code="unsupported_media_type",
        )


def _check_key(request: web.Request) -> None:
    if is_admin_route(request):
        return  # the admin routes check their own keys
    keys = request.app[CONFIG].now.keys
    presented = presented_key(request)
    if presented is not None:
        request[API_KEY] = presented
    if not keys or request.path in OPEN_PATHS or _is_open_route(request):
        return
    if not matches_any(presented, keys):
        raise APIError(
            401,
            "Invalid or missing API key. Send it as 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )
