"""Building chat completion bodies and SSE frames (pure)."""

from __future__ import annotations

import json
import math
from typing import Any

from bot.interface import Finished

DONE = b"data: [DONE]\n\n"
# A comment line: the SDK, NextChat and one-api skip it, and it keeps proxies from timing out.
PING = b": ping\n\n"
QUEUED = b": queued\n\n"  # waiting for a posting slot


def queued(ahead: int | None) -> bytes:
    """The comment a waiting stream gets: with how many requests wait before it for a token."""
    return QUEUED if ahead is None else f": queued, {ahead} ahead\n\n".encode()


def estimate_tokens(text: str) -> int:
    # one-api counts tokens itself when usage is zero, so send an estimate (~4 characters a
    # token for English), never zero for non-empty text.
    return math.ceil(len(text) / 4) if text else 0


def usage(prompt_text: str, completion_text: str) -> dict[str, int]:
    prompt_tokens = max(1, estimate_tokens(prompt_text))
    completion_tokens = estimate_tokens(completion_text)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(payload: dict[str, Any]) -> bytes:
    # Exactly one space after "data:": one-api drops lines written otherwise.
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class ChunkStream:
    """The frames of one streamed completion, all sharing its id, created and model."""

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self._envelope = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        head = json.dumps(self._envelope, separators=(",", ":"))[:-1]
        # Content chunks are the hot path: splice the text into a prebuilt envelope.
        self._content_head = f'data: {head},"choices":[{{"index":0,"delta":{{"content":'.encode()

    def role(self) -> bytes:
        return self._choice({"role": "assistant", "content": ""}, None)

    def content(self, text: str) -> bytes:
        return self._content_head + json.dumps(text).encode() + b'},"finish_reason":null}]}\n\n'

    def finish(self, reason: str) -> bytes:
        return self._choice({}, reason)

    def usage(self, counts: dict[str, int]) -> bytes:
        return sse(self._envelope | {"choices": [], "usage": counts})

    def _choice(self, delta: dict[str, str], finish_reason: str | None) -> bytes:
        return sse(
            self._envelope | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        )


def completion_body(
    completion_id: str, created: int, model: str, finished: Finished, counts: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": finished.content},
                "finish_reason": finished.reason,
            }
        ],
        "usage": counts,
        # Not in OpenAI's shape: Coze's follow-up suggestions, kept out of the content.
        "suggestions": list(finished.suggestions),
    }
