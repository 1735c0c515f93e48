"""Conversations as a resource, end to end: GET /v1/conversations and DELETE /v1/conversations/{id}
through the real bridge on the simulated Discord, with two API keys."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from simdiscord import PromptInfo, ReplyPlan, SimulatedDiscord
from tests.conftest import Bridge, BridgeFactory

KEYS = ("sk-alice-0123456789", "sk-bob-9876543210")
ALICE, BOB = KEYS


def quick(prompt: PromptInfo) -> ReplyPlan:
    return ReplyPlan(text=f"answer to {prompt.content} after {len(prompt.history)}")


@pytest.fixture
async def keyed(sim: SimulatedDiscord, start_bridge: BridgeFactory) -> Bridge:
    sim.script = quick
    bridge: Bridge = await start_bridge(api={"keys": list(KEYS)})
    return bridge


async def ask(
    bridge: Bridge, messages: list[dict[str, Any]], *, key: str | None = None, pinned: str | None = None
) -> str:
    options = {"api_key": key} if key else {}
    extra: dict[str, Any] = {"extra_body": {"conversation_id": pinned}} if pinned else {}
    async with bridge.openai(**options) as client:
        response = await client.chat.completions.create(model="coze", messages=messages, **extra)  # type: ignore[arg-type]
    return response.choices[0].message.content or ""


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def listing(bridge: Bridge, key: str | None = None, query: str = "") -> dict[str, Any]:
    async with bridge.http.get(f"{bridge.base_url}/v1/conversations{query}", headers=auth(key)) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
    return body


async def delete(bridge: Bridge, conversation_id: str, key: str | None = None) -> tuple[int, dict[str, Any]]:
    url = f"{bridge.base_url}/v1/conversations/{quote(conversation_id, safe='')}"
    async with bridge.http.delete(url, headers=auth(key)) as resp:
        return resp.status, await resp.json()


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


async def test_each_key_lists_only_its_own_conversations(
    sim: SimulatedDiscord, keyed: Bridge, tmp_path: Path
) -> None:
    before = int(time.time())
    await ask(keyed, [user("alice asks")], key=ALICE)
    await ask(keyed, [user("bob asks")], key=BOB, pinned="project")
    alice_thread, bob_thread = (prompt.channel_id for prompt in sim.prompts_received)

    alices = await listing(keyed, ALICE)
    assert alices["object"] == "list"
    assert alices["has_more"] is False
    (conversation,) = alices["data"]
    assert conversation["id"].startswith("h:"), "not pinned: the history key is its id"
    assert alices["first_id"] == alices["last_id"] == conversation["id"]
    assert conversation["object"] == "conversation"
    assert conversation["model"] == "coze"
    assert conversation["thread_id"] == str(alice_thread)
    assert conversation["turns"] == 1
    assert before <= conversation["created"] <= conversation["last_used"] <= int(time.time())

    bobs = (await listing(keyed, BOB))["data"]
    assert [(c["id"], c["thread_id"], c["turns"]) for c in bobs] == [("project", str(bob_thread), 1)]

    # /conversations without /v1 too, as every other route; a wrong key is refused.
    async with keyed.http.get(f"{keyed.base_url}/conversations", headers=auth(BOB)) as resp:
        assert (await resp.json())["data"] == bobs
    async with keyed.http.get(f"{keyed.base_url}/v1/conversations", headers=auth("sk-wrong")) as resp:
        assert resp.status == 401

    await keyed.stop()
    files = await asyncio.to_thread(lambda: [path.read_bytes() for path in tmp_path.glob("bridge.db*")])
    stored = b"".join(files)
    assert b"alice asks" not in stored
    assert not any(key.encode() in stored for key in KEYS), "only a fingerprint of a key is stored"


async def test_a_follow_up_continues_and_counts_its_turn(sim: SimulatedDiscord, keyed: Bridge) -> None:
    first = [user("one")]
    answer = await ask(keyed, first, key=ALICE)
    (before,) = (await listing(keyed, ALICE))["data"]
    follow = [*first, {"role": "assistant", "content": answer}, user("two")]
    await ask(keyed, follow, key=ALICE)

    one, two = sim.prompts_received
    assert two.channel_id == one.channel_id
    assert two.content == "two"
    (after,) = (await listing(keyed, ALICE))["data"]
    assert after["thread_id"] == before["thread_id"]
    assert after["turns"] == 2
    assert after["id"] != before["id"], "the id is the latest history key: the one a follow-up continues"
    assert after["created"] == before["created"] <= after["last_used"]


async def test_delete_forgets_the_conversation_and_archives_its_thread(
    sim: SimulatedDiscord, keyed: Bridge
) -> None:
    first = [user("forget me")]
    answer = await ask(keyed, first, key=ALICE)
    (conversation,) = (await listing(keyed, ALICE))["data"]
    thread = sim.world.channels[int(conversation["thread_id"])]
    assert not thread.archived

    status, body = await delete(keyed, conversation["id"], ALICE)
    assert (status, body) == (
        200,
        {"id": conversation["id"], "object": "conversation.deleted", "deleted": True},
    )
    async with asyncio.timeout(10):
        await sim.wait_for(lambda: thread.archived)
    assert (await listing(keyed, ALICE))["data"] == []

    # The same history again: a new thread, with the whole history posted.
    await ask(keyed, [*first, {"role": "assistant", "content": answer}, user("again")], key=ALICE)
    again = sim.prompts_received[-1]
    assert again.channel_id != thread.id
    assert again.content.startswith("User: forget me")
    status, body = await delete(keyed, conversation["id"], ALICE)
    assert (status, body["error"]["code"]) == (404, "conversation_not_found")


async def test_another_keys_id_is_not_found_like_one_that_never_was(
    sim: SimulatedDiscord, keyed: Bridge
) -> None:
    await ask(keyed, [user("mine")], key=ALICE, pinned="secret-plan")
    await ask(keyed, [user("also mine")], key=ALICE)
    ids = [c["id"] for c in (await listing(keyed, ALICE))["data"]]
    assert len(ids) == 2  # a history key, the newer one, and the pinned id
    assert ids[1] == "secret-plan"

    never = await delete(keyed, "no-such-conversation", BOB)
    for conversation_id in ids:
        status, body = await delete(keyed, conversation_id, BOB)
        assert status == 404
        assert body["error"]["code"] == "conversation_not_found"
        assert body["error"]["message"] == never[1]["error"]["message"], "nothing tells the two apart"
        assert conversation_id not in body["error"]["message"]
    assert never[0] == 404
    assert (await listing(keyed, BOB))["data"] == []
    assert [c["id"] for c in (await listing(keyed, ALICE))["data"]] == ids, "still Alice's"
    assert not any(channel.archived for channel in sim.world.channels.values())


async def test_a_pinned_conversation_shows_its_id_and_is_deleted_by_it(
    sim: SimulatedDiscord, keyed: Bridge
) -> None:
    pinned = "team/\u00e9t\u00e9 1?%"  # whatever a caller chose: a slash, a space, non-ASCII, URL syntax
    await ask(keyed, [user("first")], key=ALICE, pinned=pinned)
    await ask(keyed, [user("second")], key=ALICE, pinned=pinned)
    (conversation,) = (await listing(keyed, ALICE))["data"]
    assert (conversation["id"], conversation["turns"]) == (pinned, 2)

    status, body = await delete(keyed, pinned, ALICE)
    assert (status, body["id"], body["deleted"]) == (200, pinned, True)
    thread = sim.world.channels[int(conversation["thread_id"])]
    async with asyncio.timeout(10):
        await sim.wait_for(lambda: thread.archived)
    await ask(keyed, [user("third")], key=ALICE, pinned=pinned)
    third = sim.prompts_received[-1]
    assert third.channel_id != thread.id, "the id starts afresh"
    assert third.history == ()
    (fresh,) = (await listing(keyed, ALICE))["data"]
    assert (fresh["id"], fresh["turns"]) == (pinned, 1)


async def test_without_keys_the_conversations_made_without_one_are_listed(
    sim: SimulatedDiscord, bridge: Bridge
) -> None:
    sim.script = quick
    await ask(bridge, [user("loopback")], pinned="local")
    # Without api.keys every client is the one caller "", whatever it presents.
    for key in (None, "sk-anything"):
        assert [c["id"] for c in (await listing(bridge, key))["data"]] == ["local"]
    status, _ = await delete(bridge, "local", "sk-anything")
    assert status == 200
    assert (await listing(bridge))["data"] == []


async def test_the_list_pages_most_recently_used_first(sim: SimulatedDiscord, keyed: Bridge) -> None:
    for name in ("a", "b", "c"):
        await ask(keyed, [user(name)], key=ALICE, pinned=name)
    await ask(keyed, [user("a again")], key=ALICE, pinned="a")

    page = await listing(keyed, ALICE, "?limit=2")
    assert [c["id"] for c in page["data"]] == ["a", "c"]
    assert (page["first_id"], page["last_id"], page["has_more"]) == ("a", "c", True)
    rest = await listing(keyed, ALICE, "?limit=2&after=c")
    assert [c["id"] for c in rest["data"]] == ["b"]
    assert rest["has_more"] is False
    assert (await listing(keyed, ALICE, "?after=b"))["data"] == []


@pytest.mark.parametrize(
    ("query", "param", "status"),
    [
        ("?limit=0", "limit", 400),
        ("?limit=1001", "limit", 400),
        ("?limit=ten", "limit", 400),
        ("?after=", "after", 400),
        ("?after=someone-elses", "after", 404),
    ],
)
async def test_bad_paging_gets_an_openai_error(keyed: Bridge, query: str, param: str, status: int) -> None:
    url = f"{keyed.base_url}/v1/conversations{query}"
    async with keyed.http.get(url, headers=auth(ALICE)) as resp:
        assert resp.status == status
        error = (await resp.json())["error"]
    assert error["param"] == param
    assert error["code"] == ("conversation_not_found" if status == 404 else "invalid_value")


async def test_a_thread_is_archived_only_once_its_request_in_flight_is_over(
    sim: SimulatedDiscord, keyed: Bridge
) -> None:
    await ask(keyed, [user("start")], key=ALICE, pinned="busy")
    (conversation,) = (await listing(keyed, ALICE))["data"]
    thread = sim.world.channels[int(conversation["thread_id"])]
    gate = sim.hold("POST", "/channels/{channel_id}/messages")
    in_flight = asyncio.ensure_future(ask(keyed, [user("still going")], key=ALICE, pinned="busy"))
    async with asyncio.timeout(10):
        await sim.wait_for(lambda: len(sim.held) == 1)  # the prompt is on its way to Discord

    status, _ = await delete(keyed, "busy", ALICE)
    assert status == 200
    assert (await listing(keyed, ALICE))["data"] == [], "forgotten at once"
    gate.set()
    async with asyncio.timeout(10):
        answer = await in_flight
        # Archived before the prompt went out, the thread would have been reopened by it.
        await sim.wait_for(lambda: thread.archived)
    assert answer == "answer to still going after 1"
    assert sim.prompts_received[-1].channel_id == thread.id
    assert (await listing(keyed, ALICE))["data"] == [], "the exchange that ended after the delete is not kept"


async def test_the_status_page_tells_a_new_conversation_from_a_continued_one(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    admin = "sk-admin-overview-0123"
    bridge: Bridge = await start_bridge(api={"admin_keys": [admin]})
    first = [{"role": "user", "content": "one"}]
    async with bridge.openai() as client:
        answer = await client.chat.completions.create(model="coze", messages=first)  # type: ignore[arg-type]
        later = [*first, {"role": "assistant", "content": answer.choices[0].message.content}]
        later.append({"role": "user", "content": "two"})
        stream = await client.chat.completions.create(model="coze", messages=later, stream=True)  # type: ignore[arg-type]
        async for _ in stream:
            pass
    headers = {"Authorization": f"Bearer {admin}"}
    async with bridge.http.get(f"{bridge.base_url}/admin/overview", headers=headers) as resp:
        requests = (await resp.json())["requests"]
    chats = [entry["continued"] for entry in requests if entry["path"] == "/v1/chat/completions"]
    assert chats == [True, False], "newest first: the follow-up went on in the first one's thread"
