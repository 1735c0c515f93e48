"""The health model (`api.health_model`): a completion answered at once, without Discord.

Gateways (one-api, new-api, LiteLLM) test a channel with a real completion and switch it off
when the answer is slow or fails; through Coze each test would cost a message and often more
than their 5 s. This model says `ok` in OpenAI's shapes whenever a real prompt could be served
now (the gateway is ready and some user token can post), and 503 with the reason otherwise.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Collection, Mapping
from datetime import UTC, datetime

from aiohttp import web

from bot.interface import Finished
from bot.status import BackendStatus, BridgeState
from bridge_api.appkeys import BACKEND, CONFIG, USAGE
from bridge_api.chunks import DONE, ChunkStream, completion_body, usage
from bridge_api.errors import APIError
from bridge_api.model_access import visible_models
from bridge_api.schemas import ChatRequest

ANSWER = "ok"
# The wait to suggest when nothing says when a token can post again (all refused by Discord).
UNKNOWN_WAIT = 60
NOT_READY_WAIT = 5


def is_health_model(request: web.Request, name: str) -> bool:
    health = request.app[CONFIG].now.settings.api.health_model
    return bool(health) and name == health


def health_answer(request: web.Request, chat: ChatRequest, stream_headers: Mapping[str, str]) -> web.Response:
    """`ok` as a plain or streamed completion, or 503; nothing is posted and no limit counts it."""
    refusal = unavailable(request.app[BACKEND].status(), visible_models(request), datetime.now(UTC))
    if refusal is not None:
        raise refusal
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    # one-api counts tokens itself when usage is zero, and fails a channel test without it.
    counts = request[USAGE] = usage("".join(message.text() for message in chat.messages), ANSWER)
    if not chat.stream:
        body = completion_body(completion_id, created, chat.model, Finished("stop", ANSWER), counts)
        return web.json_response(body)
    chunks = ChunkStream(completion_id, created, chat.model)
    frames = chunks.role() + chunks.content(ANSWER) + chunks.finish("stop")
    if chat.include_usage:
        frames += chunks.usage(counts)
    return web.Response(body=frames + DONE, headers=stream_headers)


def unavailable(status: BackendStatus, models: Collection[str], now: datetime) -> APIError | None:
    """Why a prompt to one of `models` (the caller's) could not be served now, or None."""
    if status.state is not BridgeState.READY:
        return APIError(
            503,
            f"The Discord gateway is {status.state.value}; retry shortly.",
            code="gateway_not_ready",
            headers={"Retry-After": str(NOT_READY_WAIT)},
        )
    if status.intent_missing is not None:
        # Connected, yet Coze's replies would arrive without their text (as /readyz says).
        return APIError(
            503,
            "The listener bot cannot read message content: turn its Message Content intent on.",
            code="message_content_intent",
            headers={"Retry-After": str(UNKNOWN_WAIT)},
        )
    mine = [model for model in status.models if model.name in models]
    if any(model.tokens_available > 0 and model.resting_until is None for model in mine):
        return None
    # The earliest a token or a Coze bot comes back; invalid and disabled tokens have no time.
    returns = [model.resting_until for model in mine if model.resting_until is not None]
    returns += [token.resting_until for token in status.tokens if token.resting_until is not None]
    wait = max(1, math.ceil(min(returns).timestamp() - now.timestamp())) if returns else UNKNOWN_WAIT
    return APIError(
        503,
        "No user token can post to the Coze bots now (each one is resting, capped, disabled or "
        "refused by Discord); GET /v1/status shows them.",
        code="no_token_available",
        headers={"Retry-After": str(wait)},
    )
