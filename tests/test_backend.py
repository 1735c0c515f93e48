"""The reply core on a virtual clock: token rotation, Coze's refusals, lost threads, early
replies, auto-continue and shutdown at every stage, over a fake Discord (milliseconds each)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from bot.config import CompletionSettings
from bot.conversations import history_key
from bot.interface import (
    ChatTurn,
    CozeBusy,
    CozeLimited,
    Finished,
    Idle,
    Limits,
    ModelLimited,
    NotReady,
    Overloaded,
    PromptRequest,
    Queued,
    ReplyEvent,
    ReplyTimeout,
    SendFailed,
    ServerShutdown,
    TextDelta,
)
from bot.probe import VERDICT_SECONDS
from bot.rest import RestError
from bot.status import BridgeState, TokenState
from tests.backend_rig import (
    COMPLETION,
    COZE,
    MIDNIGHT,
    NOON,
    Post,
    Reply,
    Rig,
    answer,
    is_probe,
    make_rig,
    user_id,
)

pytestmark = pytest.mark.looptime

DAILY = "You have exceeded the daily limit for sending messages to the bot. Please try again later."
CREATOR = (
    "The bot's usage is covered by the developer, but due to the developer's message credits being "
    "exhausted, the bot is temporarily unavailable."
)
BUSY = "There are too many users now. Please try again a bit later."


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async for made in make_rig():
        yield made


def text_of(events: list[ReplyEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


def finished(events: list[ReplyEvent]) -> Finished:
    assert isinstance(events[-1], Finished)
    assert sum(isinstance(event, Finished) for event in events) == 1
    return events[-1]


def now() -> float:
    return asyncio.get_running_loop().time()


def by_token(replies: dict[str, str]) -> object:
    """A script that answers each token with its own text (a limit notice, say)."""
    return lambda post: Reply([replies.get(post.token, "the answer")], marker=post.token not in replies)


async def test_a_reply_streams_its_edits_and_ends_on_the_marker(rig: Rig) -> None:
    start = now()
    events = await rig.run(rig.ask())
    assert text_of(events) == "Hello there, friend." == finished(events).content
    assert finished(events).suggestions == ("More",)
    assert now() - start == pytest.approx(2.0)  # created at 1 s, two more edits 0.5 s apart


async def test_without_the_marker_the_quiet_period_ends_the_reply(rig: Rig) -> None:
    rig.discord.script = answer("No buttons today.", marker=False)
    start = now()
    events = await rig.run(rig.ask())
    assert finished(events).reason == "stop"
    assert now() - start == pytest.approx(2.0 + COMPLETION.quiet_seconds)


async def test_silence_is_a_timeout_after_the_first_reply_timeout(rig: Rig) -> None:
    rig.discord.script = lambda post: None
    start = now()
    with pytest.raises(ReplyTimeout) as caught:
        await rig.run(rig.ask())
    assert caught.value.posted
    assert now() - start == pytest.approx(COMPLETION.first_reply_timeout)


async def test_idle_events_keep_a_long_wait_alive(rig: Rig) -> None:
    rig.discord.script = answer("late", first=10.0)
    events = await rig.run(rig.ask(), heartbeat=3.0)
    assert [type(event) for event in events[:3]] == [Idle, Idle, Idle]
    assert text_of(events) == "late"


async def test_the_least_used_token_posts(rig: Rig) -> None:
    # One at a time nothing is in flight: the fewest posts today decide (ties: the first listed).
    for _ in range(3):
        await rig.run(rig.ask())
    assert rig.discord.tokens_used() == ["user token #1", "user token #2", "user token #1"]
    await rig.writes.wait()
    assert {row.requests_today for row in (await rig.store.tokens()).values()} == {1, 2}


@pytest.mark.parametrize("error", [RestError("401", status=401), RestError("verify", status=403, code=40002)])
async def test_a_refused_token_is_retired_and_the_next_one_posts(rig: Rig, error: RestError) -> None:
    rig.discord.post_failures.append(("user token #1", error))
    events = await rig.run(rig.ask())
    assert text_of(events) == "Hello there, friend."
    assert rig.discord.tokens_used() == ["user token #2"]
    await rig.run(rig.ask())
    assert rig.discord.tokens_used() == ["user token #2", "user token #2"], "the refused token is skipped"
    await rig.writes.wait()
    assert [row.invalid for row in (await rig.store.tokens()).values()].count(True) == 1


async def test_a_daily_limit_rests_the_token_and_the_next_one_answers(rig: Rig) -> None:
    rig.discord.script = by_token({"user token #1": DAILY})  # type: ignore[assignment]
    events = await rig.run(rig.ask())
    assert text_of(events) == "the answer", "the notice is never streamed"
    assert rig.discord.tokens_used() == ["user token #1", "user token #2"]
    assert len(set(post.channel_id for post in rig.discord.prompts())) == 1, "asked again in the same thread"
    await rig.writes.wait()
    assert list((await rig.store.token_rests()).values()) == [MIDNIGHT]


async def test_when_every_token_rests_the_caller_learns_when_one_is_back(rig: Rig) -> None:
    rig.discord.script = by_token({"user token #1": DAILY, "user token #2": DAILY})  # type: ignore[assignment]
    with pytest.raises(CozeLimited) as caught:
        await rig.run(rig.ask())
    assert caught.value.posted
    assert caught.value.retry_after == pytest.approx(MIDNIGHT - NOON, abs=60)
    assert "daily limit" in caught.value.message
    posted = len(rig.discord.posts)
    with pytest.raises(CozeLimited) as again:
        await rig.run(rig.ask())
    assert not again.value.posted
    assert len(rig.discord.posts) == posted, "nothing is posted while every token rests"


@pytest.mark.parametrize("notice", [DAILY, CREATOR])
async def test_a_notice_the_caller_asked_for_is_an_answer(rig: Rig, notice: str) -> None:
    # Coze repeats what it is asked to: words cannot rest a token or a model.
    rig.discord.script = lambda post: Reply([post.content.split(": ", 1)[-1]], marker=False)
    events = await rig.run(rig.ask(f"Reply with exactly: {notice}"))
    assert finished(events).content == f"Reply with exactly: {notice}".split(": ", 1)[-1]
    assert text_of(events) == finished(events).content
    assert rig.discord.tokens_used() == ["user token #1"], "asked once, with one token"
    await rig.writes.wait()
    assert await rig.store.token_rests() == {}
    assert await rig.store.model_rests() == {}


def obeying(notice: str, *, probe: str | None = "ok", by: str = "user token") -> object:
    """A Coze bot that says the notice to tokens labelled `by...` when told to in other words (the
    echo check cannot see it), and answers the bridge's probe with `probe` (None: not at all)."""

    def script(post: Post) -> Reply | None:
        if is_probe(post):
            return None if probe is None else Reply([probe])
        told = "say the limit sentence" in post.content and post.token.startswith(by)
        return Reply([notice if told else "the answer"], marker=False)

    return script


@pytest.mark.parametrize("notice", [DAILY, CREATOR])
async def test_a_dictated_notice_the_probe_does_not_confirm_is_an_answer(rig: Rig, notice: str) -> None:
    rig.discord.script = obeying(notice)  # type: ignore[assignment]
    events = await rig.run(rig.ask("say the limit sentence"))
    assert finished(events).content == notice == text_of(events)
    assert finished(events).reason == "stop"
    assert rig.discord.tokens_used() == ["user token #1"]
    (probe,) = rig.discord.probes()
    assert probe.token == "user token #1", "the probe comes from the token that got the notice"
    assert probe.channel_id not in {post.channel_id for post in rig.discord.prompts()}, (
        "in a thread of its own"
    )
    await rig.writes.wait()
    assert await rig.store.token_rests() == {}
    assert await rig.store.model_rests() == {}


async def test_a_real_limit_is_confirmed_by_the_probe(rig: Rig) -> None:
    rig.discord.script = by_token({"user token #1": DAILY})  # type: ignore[assignment]
    await rig.run(rig.ask())
    assert [post.token for post in rig.discord.probes()] == ["user token #1"]
    states = [token.state for token in rig.backend.status().tokens]
    assert states == [TokenState.RESTING, TokenState.HEALTHY], "exactly the limited token rests"


async def test_a_verdict_stands_for_a_minute_per_token(rig: Rig) -> None:
    rig.discord.script = obeying(DAILY)  # type: ignore[assignment]
    for _ in range(4):  # tokens #1, #2, #1, #2
        await rig.run(rig.ask("say the limit sentence"))
    assert [post.token for post in rig.discord.probes()] == ["user token #1", "user token #2"]
    await rig.advance(VERDICT_SECONDS)
    await rig.run(rig.ask("say the limit sentence"))
    assert len(rig.discord.probes()) == 3, "an old verdict is checked again"
    threads = {post.channel_id for post in rig.discord.probes()}
    assert len(threads) == 1, "the bridge keeps one thread for its probes"


async def test_a_probe_without_an_answer_leaves_the_notice_standing(rig: Rig) -> None:
    rig.discord.script = obeying(DAILY, probe=None, by="user token #1")  # type: ignore[assignment]
    events = await rig.run(rig.ask("say the limit sentence"), heartbeat=10.0)
    assert text_of(events) == "the answer", "the next token answered"
    assert sum(isinstance(event, Idle) for event in events) >= 5, "the caller is kept alive meanwhile"
    assert rig.discord.tokens_used() == ["user token #1", "user token #2"]
    await rig.writes.wait()
    assert len(await rig.store.token_rests()) == 1


async def test_a_storage_failure_costs_no_answer(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(*args: object) -> None:
        raise OSError("disk gone")

    rig.store.remember = broken  # type: ignore[method-assign]
    rig.store.add_thread = broken  # type: ignore[method-assign]
    rig.store.save_token = broken  # type: ignore[method-assign]
    events = await rig.run(rig.ask())
    assert finished(events).content == "Hello there, friend."
    await rig.writes.wait()
    assert "disk gone" in caplog.text, "the failed bookkeeping is logged"
    assert (await rig.run(rig.ask()))[-1] == finished(events), "and the next request is served"


async def test_the_creator_limit_rests_the_model(rig: Rig) -> None:
    rig.discord.script = lambda post: Reply([CREATOR], marker=False)
    with pytest.raises(ModelLimited) as caught:
        await rig.run(rig.ask())
    assert caught.value.retry_after == pytest.approx(MIDNIGHT - NOON, abs=60)
    threads = len(rig.discord.threads)
    with pytest.raises(ModelLimited):
        await rig.run(rig.ask())
    assert len(rig.discord.threads) == threads
    await rig.writes.wait()
    assert await rig.store.model_rests()


async def test_busy_is_asked_again_with_growing_pauses(rig: Rig) -> None:
    times: list[float] = []

    def script(post: Post) -> Reply:
        times.append(now())
        return Reply([BUSY if len(times) < 3 else "at last"], marker=len(times) == 3, first=0.1)

    rig.discord.script = script
    events = await rig.run(rig.ask())
    assert text_of(events) == "at last"
    quiet = COMPLETION.quiet_seconds + 0.1
    assert [round(b - a - quiet, 3) for a, b in itertools.pairwise(times)] == [2.0, 4.0]
    assert len({post.channel_id for post in rig.discord.prompts()}) == 1


async def test_busy_three_times_is_coze_busy(rig: Rig) -> None:
    rig.discord.script = lambda post: Reply([BUSY], marker=False)
    with pytest.raises(CozeBusy):
        await rig.run(rig.ask())
    assert len(rig.discord.prompts()) == 3


async def test_a_lost_thread_is_replaced_and_the_whole_history_posted(rig: Rig) -> None:
    first = await rig.run(rig.ask("first question"))
    thread = rig.discord.prompts()[0].channel_id
    rig.discord.gone_threads.add(thread)
    follow_up = rig.request(
        ("user", "first question"), ("assistant", finished(first).content), ("user", "second question")
    )
    events = await rig.run(follow_up)
    assert text_of(events) == "Hello there, friend."
    last = rig.discord.prompts()[-1]
    assert last.channel_id != thread
    assert "first question" in last.content
    assert "second question" in last.content
    await rig.writes.wait()
    assert thread not in await rig.store.idle_threads(float("inf"))


async def test_a_thread_lost_right_after_it_was_made_is_a_send_failure(rig: Rig) -> None:
    rig.discord.post_failures.append((None, RestError("gone", status=404)))
    with pytest.raises(SendFailed) as caught:
        await rig.run(rig.ask())
    assert not caught.value.posted


async def test_a_follow_up_continues_in_the_thread_with_only_its_new_turn(rig: Rig) -> None:
    first = await rig.run(rig.ask("first question"))
    follow_up = rig.request(
        ("user", "first question"), ("assistant", finished(first).content), ("user", "second question")
    )
    await rig.run(follow_up)
    one, two = rig.discord.prompts()
    assert one.channel_id == two.channel_id
    assert "first question" not in two.content


async def test_the_finish_goes_out_before_the_storage_write(rig: Rig) -> None:
    gate = asyncio.Event()
    remember = rig.store.remember

    async def slow_remember(key: str, thread_id: int, at: float, *owner: str | None) -> None:
        await gate.wait()
        await remember(key, thread_id, at, *owner)

    rig.store.remember = slow_remember  # type: ignore[method-assign]
    first = await rig.run(rig.ask("first question"))  # returns while the write still waits
    exchange = (ChatTurn("user", "first question"), ChatTurn("assistant", finished(first).content))
    key = history_key("coze", exchange)
    assert await rig.store.find_conversation(key) is None
    follow_up = rig.request(
        ("user", "first question"), ("assistant", finished(first).content), ("user", "second question")
    )
    await rig.run(follow_up)
    one, two = rig.discord.prompts()
    assert one.channel_id == two.channel_id, "an unwritten exchange is still found"
    gate.set()
    await rig.writes.wait()
    assert await rig.store.find_conversation(key) == one.channel_id


async def test_private_threads_take_in_the_coze_bot_and_each_posting_account() -> None:
    async for rig in make_rig(private_threads=True):
        conversation = "private-1"
        for _ in range(3):  # tokens #1, #2, #1
            events = await rig.run(rig.ask(conversation=conversation))
            assert finished(events).content == "Hello there, friend."
        (thread,) = rig.discord.threads
        assert rig.discord.members[thread] == [COZE, user_id("user token #1"), user_id("user token #2")]
        assert rig.discord.tokens_used() == ["user token #1", "user token #2", "user token #1"]


async def test_a_token_whose_account_is_gone_gives_way_in_a_private_thread() -> None:
    async for rig in make_rig(private_threads=True):
        rig.discord.revoked.add("user token #1")
        events = await rig.run(rig.ask())
        assert finished(events).content == "Hello there, friend."
        assert rig.discord.tokens_used() == ["user token #2"]
        assert [token.state for token in rig.backend.status().tokens] == [
            TokenState.INVALID,
            TokenState.HEALTHY,
        ]


async def test_a_thread_being_forgotten_is_not_continued(rig: Rig) -> None:
    first = await rig.run(rig.ask("first question"))
    thread = rig.discord.prompts()[0].channel_id
    await rig.writes.wait()
    gate = asyncio.Event()
    forget_thread = rig.store.forget_thread

    async def slow_forget(thread_id: int) -> None:
        await gate.wait()
        await forget_thread(thread_id)

    rig.store.forget_thread = slow_forget  # type: ignore[method-assign]
    forgetting = asyncio.ensure_future(rig.backend._conversations.forget(thread))  # as housekeeping does
    await rig.advance(0)  # it has begun: the store still has the thread, until the gate opens
    follow_up = rig.request(
        ("user", "first question"), ("assistant", finished(first).content), ("user", "second question")
    )
    await rig.run(follow_up)
    assert rig.discord.prompts()[-1].channel_id != thread, "the store still has it; it is going all the same"
    gate.set()
    await forgetting


async def test_a_reply_that_beats_rest_is_kept(rig: Rig) -> None:
    rig.discord.script = lambda post: Reply(["Qu", "Quick", "Quick one."], early=3)
    start = now()
    events = await rig.run(rig.ask())
    assert text_of(events) == "Quick one."
    assert now() - start == pytest.approx(0.0, abs=0.01), "the marker came with the early edits"


async def test_auto_continue_stitches_a_cut_off_answer() -> None:
    completion = CompletionSettings(**(COMPLETION.model_dump() | {"auto_continue": 2}))
    async for rig in make_rig(completion=completion):
        parts = iter(["The first part of a long answer ends here...", "ends here and then the rest."])
        rig.discord.script = lambda post, parts=parts: Reply([next(parts)])
        events = await rig.run(rig.ask())
        assert text_of(events) == finished(events).content
        assert finished(events).content == "The first part of a long answer ends here and then the rest."
        assert rig.discord.prompts()[-1].content.endswith("continue")


async def test_the_gateway_away_stops_the_quiet_period(rig: Rig) -> None:
    rig.discord.script = answer("Held while away.", marker=False)
    task = asyncio.ensure_future(rig.run(rig.ask()))
    await rig.advance(2.5)  # loop time: the reply's edits are in
    rig.gateway.set(BridgeState.DEGRADED)
    await rig.advance(30)
    assert not task.done(), "silence while the gateway is away proves nothing"
    rig.gateway.set(BridgeState.READY)
    returned = now()
    events = await task
    assert finished(events).reason == "stop"
    assert now() - returned == pytest.approx(COMPLETION.quiet_seconds)


# Shutdown at every stage: every request ends with ServerShutdown, and nothing more is posted.


async def test_shutdown_while_following_a_reply(rig: Rig) -> None:
    rig.discord.script = answer("never finished", first=100.0)
    task = asyncio.ensure_future(rig.run(rig.ask()))
    await rig.discord.wait_for_prompts(1)
    rig.backend.begin_shutdown()
    with pytest.raises(ServerShutdown) as caught:
        await task
    assert caught.value.posted


async def test_shutdown_cuts_short_a_thread_being_made(rig: Rig) -> None:
    rig.discord.thread_gate = asyncio.Event()  # Discord never answers
    task = asyncio.ensure_future(rig.run(rig.ask()))
    await rig.advance(1)
    rig.backend.begin_shutdown()
    with pytest.raises(ServerShutdown) as caught:
        await task
    assert not caught.value.posted
    assert rig.discord.posts == []


async def test_shutdown_cuts_short_a_prompt_being_posted(rig: Rig) -> None:
    rig.discord.post_gate = asyncio.Event()  # Discord never answers the post
    task = asyncio.ensure_future(rig.run(rig.ask()))
    await rig.advance(1)
    rig.backend.begin_shutdown()
    with pytest.raises(ServerShutdown) as caught:
        await task
    assert caught.value.posted, "the prompt may be in Discord: the caller must not send it again"


async def test_shutdown_while_waiting_to_be_admitted() -> None:
    async for rig in make_rig(max_concurrent_posts=1):
        rig.discord.thread_gate = asyncio.Event()
        tasks = [asyncio.ensure_future(rig.run(rig.ask(f"q{n}"))) for n in range(2)]
        await rig.advance(1)  # one is making its thread, the other waits for its turn
        rig.backend.begin_shutdown()
        rig.discord.thread_gate.set()
        for task in tasks:
            with pytest.raises(ServerShutdown) as caught:
                await task
            assert not caught.value.posted
        assert rig.discord.posts == []
        assert rig.discord.threads == [], "the thread being made was cut short; the other never began"


async def test_shutdown_while_waiting_for_the_conversation(rig: Rig) -> None:
    rig.discord.script = answer("slow", first=100.0)
    first = asyncio.ensure_future(rig.run(rig.ask("one", conversation="c")))
    await rig.discord.wait_for_prompts(1)
    second = asyncio.ensure_future(rig.run(rig.ask("two", conversation="c")))
    await rig.advance(1)
    rig.backend.begin_shutdown()
    for task, posted in ((first, True), (second, False)):
        with pytest.raises(ServerShutdown) as caught:
            await task
        assert caught.value.posted is posted
    assert len(rig.discord.prompts()) == 1


async def test_shutdown_during_a_busy_pause(rig: Rig) -> None:
    rig.discord.script = lambda post: Reply([BUSY], marker=False, first=0.1)
    task = asyncio.ensure_future(rig.run(rig.ask()))
    await rig.advance(COMPLETION.quiet_seconds + 1.0)  # the notice ended; the 2 s pause runs
    rig.backend.begin_shutdown()
    with pytest.raises(ServerShutdown):
        await task
    assert len(rig.discord.prompts()) == 1


async def test_after_shutdown_new_requests_are_not_ready(rig: Rig) -> None:
    rig.backend.begin_shutdown()
    assert rig.backend.state is BridgeState.STOPPING
    with pytest.raises(NotReady):
        await rig.run(rig.ask())
    assert rig.discord.posts == []


async def test_past_max_waiting_a_request_is_overloaded_before_posting_anything() -> None:
    limits = Limits(max_waiting=1)

    def ask(rig: Rig, text: str) -> PromptRequest:
        return replace(rig.ask(text), limits=limits)

    async for rig in make_rig(max_concurrent_posts=1):
        rig.discord.thread_gate = asyncio.Event()  # the one slot is busy making a thread
        first = asyncio.ensure_future(rig.run(ask(rig, "first")))
        second = asyncio.ensure_future(rig.run(ask(rig, "second"), heartbeat=2.0))
        await rig.advance(5)
        rig.backend.check_capacity(Limits(max_waiting=2))  # room for one more
        with pytest.raises(Overloaded) as caught:
            rig.backend.check_capacity(limits)
        assert caught.value.retry_after == 1
        with pytest.raises(Overloaded) as refused:
            await rig.run(ask(rig, "third"))
        assert not refused.value.posted
        rig.discord.thread_gate.set()
        assert finished(await first).content == "Hello there, friend."
        events = await second
        assert events[:2] == [Queued(), Queued()], "every heartbeat while it waited (5 s)"
        assert finished(events).content == "Hello there, friend."
        assert [post.content.endswith(("first", "second")) for post in rig.discord.prompts()] == [True, True]
        assert len(rig.discord.threads) == 2, "the third made no thread"
