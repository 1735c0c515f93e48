"""The caller's conversations as a resource: GET /v1/conversations lists them, DELETE
/v1/conversations/{id} forgets one and has its thread archived.

A caller is its API key (without `api.keys`, everyone is the same caller, ""): it sees and
deletes only its own, and another key's id is as unknown as one that never existed. Each has
the id it pinned (X-Conversation-Id or `conversation_id`), or else its latest history key, the
id a follow-up would continue. Times are Unix seconds and the list pages like OpenAI's
(`limit`, `after`, `has_more`).
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bot.interface import BridgeError, ConversationInfo
from bridge_api.appkeys import API_KEY, BACKEND, CONFIG
from bridge_api.chat import refuse_floods
from bridge_api.errors import APIError
from bridge_api.schemas import parse_body

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class ListQuery(BaseModel):
    """GET /v1/conversations?limit=&after=: the query string, checked like a body."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    after: str | None = Field(default=None, min_length=1)  # the last id of the page before


def caller(request: web.Request) -> str:
    # As bridge_api.chat makes `PromptRequest.caller`: the key only when keys are required (the
    # middleware has checked it then); otherwise one caller, whatever header a client sends.
    return request.get(API_KEY, "") if request.app[CONFIG].now.keys else ""


def conversation_json(conversation: ConversationInfo) -> dict[str, object]:
    return {
        "id": conversation.id,
        "object": "conversation",
        "model": conversation.model,
        # A string, as Discord gives snowflakes: past 2**53 a JavaScript number loses digits.
        "thread_id": str(conversation.thread_id),
        "created": int(conversation.created.timestamp()),
        "last_used": int(conversation.last_used.timestamp()),
        "turns": conversation.turns,
    }


async def list_conversations(request: web.Request) -> web.StreamResponse:
    """GET /v1/conversations: the caller's own, most recently used first."""
    query = parse_body(ListQuery, dict(request.query))
    listed = list(await request.app[BACKEND].conversations(caller(request)))
    start = 0
    if query.after is not None:
        ids = [conversation.id for conversation in listed]
        if query.after not in ids:
            raise APIError(
                404,
                "You have no conversation with the id given as 'after'; it may have been deleted.",
                code="conversation_not_found",
                param="after",
            )
        start = ids.index(query.after) + 1
    page = listed[start : start + query.limit]
    return web.json_response(
        {
            "object": "list",
            "data": [conversation_json(conversation) for conversation in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": start + len(page) < len(listed),
        }
    )


async def delete_conversation(request: web.Request) -> web.StreamResponse:
    """DELETE /v1/conversations/{id}: forget it now; its thread is archived in the background."""
    refuse_floods(request)  # each one reaches Discord
    conversation_id = request.match_info["conversation_id"]
    try:
        await request.app[BACKEND].forget_conversation(caller(request), conversation_id)
    except BridgeError as exc:
        raise APIError.from_bridge(exc) from None
    return web.json_response({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


def add_routes(app: web.Application) -> None:
    for prefix in ("/v1", ""):
        app.router.add_get(f"{prefix}/conversations", list_conversations)
        # Any characters, "/" too: a pinned id is whatever the caller chose.
        app.router.add_delete(f"{prefix}/conversations/{{conversation_id:.+}}", delete_conversation)
