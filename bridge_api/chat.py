"""POST /v1/chat/completions: one path for streamed and plain answers."""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import aclosing
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from aiohttp import web

from bot.interface import Backend, BridgeError, Finished, Idle, PromptRequest, Queued, TextDelta
from bot.status import BridgeState
from bridge_api.appkeys import (
    API_KEY,
    BACKEND,
    CONFIG,
    CONTINUED,
    ERROR_CODE,
    FIRST_TOKEN,
    HTTP_CLIENT,
    IN_BAND_ERROR,
    METRICS,
    MODEL,
    REQUEST_ID,
    STARTED,
    USAGE,
)
from bridge_api.chunks import DONE, PING, ChunkStream, completion_body, queued, sse, usage
from bridge_api.deadlines import read_body
from bridge_api.errors import APIError, server_error
from bridge_api.flood import caller_of
from bridge_api.health_model import health_answer, is_health_model
from bridge_api.image_input import load_images
from bridge_api.model_access import pinned, resolve_model
from bridge_api.schemas import ChatRequest, parse_body

log = logging.getLogger(__name__)

# Discord takes at most 10 attachments per message.
MAX_IMAGES = 10
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # nginx buffers responses unless told not to, which stalls streams behind it.
    "X-Accel-Buffering": "no",
}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    chat = parse_body(ChatRequest, await read_json(request))
    request[MODEL] = chat.model
    if is_health_model(request, chat.model):
        # Before the rate limit: a gateway testing its channel must never be shut out by it.
        return health_answer(request, chat, SSE_HEADERS)
    route = resolve_model(request, chat.model)
    backend = request.app[BACKEND]
    require_ready(backend)
    refuse_floods(request)
    parts = chat.image_parts()
    if len(parts) > MAX_IMAGES:
        raise APIError(
            400,
            f"At most {MAX_IMAGES} images fit one Discord message.",
            code="too_many_images",
            param="messages",
        )
    settings = request.app[CONFIG].now.settings.api
    images = await load_images(
        request.app[HTTP_CLIENT],
        [(param, url) for _, param, url in parts],
        settings.max_image_bytes,
        settings.max_upload_bytes,
    )
    # Only these pin a conversation: front-ends fill `user` with a user id, which would pin all
    # of that user's chats to one thread.
    conversation = request.headers.get("X-Conversation-Id", "").strip() or chat.conversation_id or None
    prompt = chat.prompt(
        request[REQUEST_ID],
        route=route,
        conversation=conversation,
        caller=request.get(API_KEY, "") if request.app[CONFIG].now.keys else "",
        limits=settings.limits(),
        images=[(index, image) for (index, _, _), image in zip(parts, images, strict=True)],
    )
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    try:
        backend.check_capacity(prompt.limits)  # a real 503 while the status line is still ours
    except BridgeError as exc:
        raise _bridge_error(request, exc) from None
    if chat.stream:
        return await _stream(request, backend, chat, prompt, ChunkStream(completion_id, created, chat.model))
    finished = await collect_reply(request, backend, prompt)
    request[CONTINUED] = finished.continued
    counts = request[USAGE] = usage(_prompt_text(prompt), finished.content)
    return web.json_response(completion_body(completion_id, created, chat.model, finished, counts))


def refuse_floods(request: web.Request) -> None:
    """429 for a caller over `api.rate_limit_per_minute`, before anything is posted."""
    config = request.app[CONFIG].now
    config.limiter.admit(caller_of(request, request.get(API_KEY), bool(config.keys)))


def require_ready(backend: Backend) -> None:
    if backend.state is not BridgeState.READY:
        # Checked before any header goes out, so the client gets a real status and can retry.
        raise APIError(
            503,
            f"The Discord gateway is {backend.state.value}; retry shortly.",
            code="gateway_not_ready",
            headers={"Retry-After": "5"},
        )


async def read_json(request: web.Request) -> object:
    raw = await read_body(request, request.app[CONFIG].now.settings.api.body_timeout_seconds)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "The request body is nested too deeply.", code="invalid_json") from None


async def collect_reply(request: web.Request, backend: Backend, prompt: PromptRequest) -> Finished:
    """The whole reply at once (plain answers and image generation)."""
    heartbeat = 3600.0  # nobody to keep alive before the whole answer is there
    # Nothing reaches the caller while it waits, and a client gives up on a silent request: it
    # waits for a free user token no longer than for Coze's first reply.
    wait = request.app[CONFIG].now.settings.completion.first_reply_timeout
    prompt = replace(prompt, limits=replace(prompt.limits, max_queue_seconds=wait))
    try:
        prompt = pinned(request, prompt)
        finished: Finished | None = None
        async with aclosing(backend.complete(prompt, heartbeat=heartbeat)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    _first_token(request)
                elif isinstance(event, Finished):
                    finished = event
                    if not event.settling:
                        break  # else on, until the backend has written the exchange
    except BridgeError as exc:
        raise _bridge_error(request, exc) from None
    if finished is None:
        raise _unfinished()
    return finished


async def _stream(
    request: web.Request, backend: Backend, chat: ChatRequest, prompt: PromptRequest, chunks: ChunkStream
) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    # Headers go out at once: NextChat gives up on a stream with no headers after 60 s, and
    # Coze can take longer than that to start.
    await response.prepare(request)
    await response.write(chunks.role())
    heartbeat = request.app[CONFIG].now.settings.api.ping_seconds
    error: APIError | None = None
    open_streams = request.app[METRICS].open_streams
    open_streams.inc()
    try:
        prompt = pinned(request, prompt)
        async with aclosing(backend.complete(prompt, heartbeat=heartbeat)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    _first_token(request)
                    await response.write(chunks.content(event.text))
                elif isinstance(event, Idle):
                    await response.write(PING)
                elif isinstance(event, Queued):
                    await response.write(queued(event.ahead))
                else:
                    request[CONTINUED] = event.continued
                    ending = chunks.finish(event.reason)
                    counts = request[USAGE] = usage(_prompt_text(prompt), event.content)
                    if chat.include_usage:
                        ending += chunks.usage(counts)
                    if event.settling:
                        # The answer's end at once, [DONE] once the exchange is written: a
                        # follow-up to any bridge sharing the database then finds it.
                        await response.write(ending)
                        async for _ in events:
                            pass
                        await response.write(DONE)
                    else:
                        await response.write(ending + DONE)  # in one write, before the iterator closes
                    break
            else:
                error = _unfinished()
    except BridgeError as exc:
        error = _bridge_error(request, exc)
    except APIError as exc:
        error = exc  # the model went away in a reload while the headers went out
    except (ConnectionError, OSError):
        raise  # the client is gone: nothing more can be written to it

    except Exception:
        log.exception("stream %s failed", request[REQUEST_ID])
        error = server_error()
    finally:
        open_streams.dec()
    if error is not None:
        # After the headers, the only way to report is in-band; the stream still ends cleanly.
        request[IN_BAND_ERROR] = error.status
        if error.code:
            request[ERROR_CODE] = error.code
        notice = b""
        if request.app[CONFIG].now.settings.api.stream_errors_as_content:
            notice = chunks.content(readable_notice(error, datetime.now(UTC)))
        await response.write(notice + sse(error.body()) + DONE)
    await response.write_eof()
    return response


def readable_notice(error: APIError, now: datetime) -> str:
    """The error as a line a person reads in a chat window (Coze's own words first, if any:
    this is content, which gateways do not read for words that switch a channel off)."""
    text = f"[coze-discord-bridge] {error.message}"
    if error.coze_notice:
        text = f"[coze-discord-bridge] Coze: {error.coze_notice} ({error.message})"
    if (wait := error.headers.get("Retry-After")) is not None:
        at = now + timedelta(seconds=int(wait))
        text += f" (retry after {at:%H:%M} UTC)"
    return text


def _first_token(request: web.Request) -> None:
    if FIRST_TOKEN not in request:
        request[FIRST_TOKEN] = now = time.perf_counter()
        request.app[METRICS].first_token.observe(now - request[STARTED])


def _unfinished() -> APIError:
    return APIError(502, "The Coze reply ended without finishing.", code="upstream_error")


def _bridge_error(request: web.Request, exc: BridgeError) -> APIError:
    request.app[METRICS].upstream_errors.labels(exc.code).inc()
    return APIError.from_bridge(exc)


def _prompt_text(prompt: PromptRequest) -> str:
    return "".join(turn.content for turn in prompt.turns)
