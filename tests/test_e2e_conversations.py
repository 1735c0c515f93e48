"""Conversations continue in their thread: only new turns are posted, across restarts too."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from simdiscord import ReplyPlan, SimulatedDiscord
from tests.conftest import Bridge, BridgeFactory

SYSTEM = {"role": "system", "content": "You are a terse assistant."}


async def ask(bridge: Bridge, messages: list[dict[str, Any]], **extra: Any) -> str:
    async with bridge.openai() as client:
        response = await client.chat.completions.create(model="coze", messages=messages, **extra)  # type: ignore[arg-type]
    return response.choices[0].message.content or ""


def user_posts(sim: SimulatedDiscord) -> list[str]:
    """Every message the bridge's user tokens posted, in order."""
    users = {account.id for account in sim.world.users}
    return [m.content for m in sim.messages if m.author_id in users]


async def test_a_second_turn_posts_only_the_new_user_turn(sim: SimulatedDiscord, bridge: Bridge) -> None:
    first = [SYSTEM, {"role": "user", "content": "What is a thread?"}]
    answer = await ask(bridge, first)
    second = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "And a channel?"}]
    reply = await ask(bridge, second)

    one, two = sim.prompts_received
    assert two.channel_id == one.channel_id, "the conversation continued in its thread"
    assert two.content == "And a channel?"
    assert "I remember 1 earlier prompt(s) in this thread" in reply
    posts = user_posts(sim)
    assert posts[1] == f"<@{sim.coze_bot_id}> And a channel?"
    assert len(posts[1].encode()) < len(posts[0].encode())


async def test_a_third_turn_continues_too_and_whitespace_does_not_matter(
    sim: SimulatedDiscord, bridge: Bridge
) -> None:
    history: list[dict[str, Any]] = []
    for question in ("one", "two", "three"):
        history.append({"role": "user", "content": question})
        answer = await ask(bridge, history)
        # Clients often trim or re-wrap the reply they show; the match ignores the ends.
        history.append({"role": "assistant", "content": f"  {answer}\n"})
    assert len({p.channel_id for p in sim.prompts_received}) == 1
    assert [p.content for p in sim.prompts_received] == ["one", "two", "three"]


async def test_an_edited_history_starts_a_new_thread(sim: SimulatedDiscord, bridge: Bridge) -> None:
    first = [{"role": "user", "content": "Name a colour."}]
    await ask(bridge, first)
    edited = [
        *first,
        {"role": "assistant", "content": "Something I never said."},
        {"role": "user", "content": "Why?"},
    ]
    await ask(bridge, edited)
    one, two = sim.prompts_received
    assert two.channel_id != one.channel_id
    assert "Assistant: Something I never said." in two.content, "a new thread gets the whole history"


async def test_only_the_header_or_conversation_id_pins_a_thread(
    sim: SimulatedDiscord, bridge: Bridge
) -> None:
    # Front-ends fill `user` with the user's id: it must not pin every chat of theirs to one thread.
    await ask(bridge, [{"role": "user", "content": "first"}], user="alice")
    await ask(bridge, [{"role": "user", "content": "second"}], user="alice")
    await ask(
        bridge,
        [{"role": "user", "content": "third"}],
        user="alice",
        extra_headers={"X-Conversation-Id": "work"},
    )
    await ask(bridge, [{"role": "user", "content": "fourth"}], extra_headers={"X-Conversation-Id": "work"})
    # Gateways such as one-api drop unknown headers but forward the body.
    await ask(bridge, [{"role": "user", "content": "fifth"}], extra_body={"conversation_id": "work"})
    first, second, third, fourth, fifth = sim.prompts_received
    assert second.channel_id != first.channel_id
    assert third.channel_id not in (first.channel_id, second.channel_id)
    assert fourth.channel_id == third.channel_id == fifth.channel_id
    assert (fourth.content, fifth.content) == ("fourth", "fifth")


async def test_conversations_belong_to_their_api_key(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(api={"keys": ["sk-alice", "sk-mallory"]})

    async def ask_as(key: str, text: str) -> None:
        async with bridge.openai(api_key=key) as client:
            await client.chat.completions.create(
                model="coze",
                messages=[{"role": "user", "content": text}],
                extra_headers={"X-Conversation-Id": "project"},
            )

    await ask_as("sk-alice", "my secret plan")
    await ask_as("sk-mallory", "what did we talk about?")
    await ask_as("sk-alice", "go on")
    alice, mallory, alice_again = sim.prompts_received
    assert mallory.channel_id != alice.channel_id, "the same id under another key is another thread"
    assert mallory.history == (), "nothing of the other caller's context"
    assert alice_again.channel_id == alice.channel_id


async def test_user_keeps_identical_histories_apart(sim: SimulatedDiscord, bridge: Bridge) -> None:
    first = [{"role": "user", "content": "Hello"}]
    answer = await ask(bridge, first, user="alice")
    await ask(bridge, first, user="bob")  # the same words, by someone else
    follow = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "More"}]
    await ask(bridge, follow, user="bob")
    await ask(bridge, follow, user="alice")
    alice, bob, bob_more, alice_more = sim.prompts_received
    assert bob.channel_id != alice.channel_id
    assert alice_more.channel_id == alice.channel_id
    assert bob_more.channel_id == bob.channel_id


async def test_a_conversation_takes_only_so_many_waiting(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(api={"max_waiting_per_conversation": 1})
    sim.script = lambda prompt: ReplyPlan(text="never", silent=True)
    header = {"X-Conversation-Id": "busy"}
    body = {"model": "coze", "messages": [{"role": "user", "content": "q"}]}
    url = f"{bridge.base_url}/v1/chat/completions"

    async def status() -> tuple[int, str | None]:
        async with bridge.http.post(url, json=body, headers=header) as resp:
            return resp.status, (await resp.json())["error"]["code"] if resp.status != 200 else None

    in_flight = asyncio.ensure_future(status())
    async with asyncio.timeout(10):
        await sim.wait_for(lambda: len(sim.prompts_received) == 1)
    later = [asyncio.ensure_future(status()) for _ in range(3)]
    refused: list[tuple[int, str | None]] = []
    async with asyncio.timeout(10):
        while len(refused) < 2:  # one of the three waits behind the one in flight
            done, _ = await asyncio.wait(
                [t for t in later if t not in refused], return_when=asyncio.FIRST_COMPLETED
            )
            refused.extend(done)  # type: ignore[arg-type]
    assert sorted(task.result() for task in refused) == [(429, "conversation_busy")] * 2  # type: ignore[attr-defined]
    assert len(sim.prompts_received) == 1
    for task in [in_flight, *later]:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_prompt_too_long_for_discord_is_refused_before_posting(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(api={"max_prompt_messages": 2})
    threads = len(sim.world.channels)
    body = {"model": "coze", "messages": [{"role": "user", "content": "word " * 1000}]}
    async with bridge.http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert sim.prompts_received == []
    assert len(sim.world.channels) == threads, "not even a thread was made"


async def test_concurrent_requests_on_one_conversation_take_turns(
    sim: SimulatedDiscord, bridge: Bridge
) -> None:
    sim.script = lambda prompt: ReplyPlan(text=f"answer to {prompt.content}", chunk_chars=3, step_delay=0.02)
    header = {"X-Conversation-Id": "shared"}
    await ask(bridge, [{"role": "user", "content": "warm up"}], extra_headers=header)
    answers = await asyncio.gather(
        ask(bridge, [{"role": "user", "content": "alpha"}], extra_headers=header),
        ask(bridge, [{"role": "user", "content": "beta"}], extra_headers=header),
    )
    assert sorted(answers) == ["answer to alpha", "answer to beta"]
    _, first, second = sim.prompts_received
    assert first.channel_id == second.channel_id
    # One prompt in flight per thread: the second went out after the first reply had finished.
    first_reply = [m for m in sim.messages if m.reference_id == first.message_id]
    assert first_reply
    assert first_reply[-1].components, "the first reply was complete"
    assert second.message_id > max(m.id for m in first_reply)


async def test_the_conversation_map_survives_a_restart(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge()
    first = [{"role": "user", "content": "Remember me?"}]
    answer = await ask(bridge, first)
    await bridge.stop()

    restarted: Bridge = await start_bridge()
    await ask(
        restarted, [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "Still?"}]
    )
    one, two = sim.prompts_received
    assert two.channel_id == one.channel_id
    assert two.content == "Still?"


async def test_a_deleted_thread_is_replaced(sim: SimulatedDiscord, bridge: Bridge) -> None:
    first = [{"role": "user", "content": "hello"}]
    answer = await ask(bridge, first)
    del sim.world.channels[sim.prompts_received[0].channel_id]  # someone deleted the thread
    await ask(
        bridge, [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "again"}]
    )
    one, two = sim.prompts_received
    assert two.channel_id != one.channel_id
    assert two.content.startswith("User: hello")


async def test_idle_threads_are_archived_and_forgotten(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    # Someone else's thread in the same channel must never be touched.
    other = sim.world.add_channel("not ours", type=11, parent_id=sim.channel_id, owner_id=sim.world.human.id)
    bridge: Bridge = await start_bridge(storage={"thread_ttl_hours": 0.5 / 3600})
    first = [{"role": "user", "content": "short-lived"}]
    answer = await ask(bridge, first)
    thread = sim.world.channels[sim.prompts_received[0].channel_id]
    async with asyncio.timeout(10):
        await sim.wait_for(lambda: thread.archived)
    assert not other.archived
    await ask(
        bridge, [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "later"}]
    )
    assert sim.prompts_received[1].channel_id != thread.id, "a forgotten conversation starts afresh"


@pytest.mark.parametrize(("names", "shows_prompt"), [("neutral", False), ("prompt", True)])
async def test_thread_titles_keep_the_prompt_to_themselves(
    sim: SimulatedDiscord, start_bridge: BridgeFactory, names: str, shows_prompt: bool
) -> None:
    bridge: Bridge = await start_bridge(discord={"thread_names": names})
    await ask(bridge, [{"role": "user", "content": "my salary is confidential"}])
    title = sim.world.channels[sim.prompts_received[0].channel_id].name
    assert ("salary" in title) is shows_prompt
    assert title.startswith("my salary" if shows_prompt else "chat · ")


async def test_private_threads_show_the_conversation_only_to_its_members(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(discord={"private_threads": True})
    turns = [{"role": "user", "content": "between us"}]
    pinned = {"extra_body": {"conversation_id": "c-1"}}
    answer = await ask(bridge, turns, **pinned)
    assert answer.startswith('You asked: "between us"')
    # The same conversation goes on with another user token (the least busy), which must join
    # the thread first.
    later = [*turns, {"role": "assistant", "content": answer}, {"role": "user", "content": "and?"}]
    await ask(bridge, later, **pinned)
    first, second = sim.prompts_received
    assert first.channel_id == second.channel_id
    assert first.author_id != second.author_id
    thread = sim.world.channels[first.channel_id]
    assert thread.type == 12
    assert thread.members == {sim.world.listener.id, sim.coze_bot_id, first.author_id, second.author_id}
    assert not thread.admits(sim.world.human.id), "other members of the server do not see it"
