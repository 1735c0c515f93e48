"""The pool's pacing and queue in the reply core, on a virtual clock over a fake Discord."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

import pytest

from bot.config import AccountSettings, DiscordSettings, ModelSettings, StorageSettings, UserTokenSettings
from bot.interface import (
    CozeLimited,
    Finished,
    Limits,
    Overloaded,
    Queued,
    ReplyEvent,
    ServerShutdown,
    UnknownToken,
)
from bot.rest import RestError
from bot.status import TokenState
from bot.token_pool import Pacing, fingerprint
from tests.backend_rig import COMPLETION, MODEL, Reply, Rig, make_rig

pytestmark = pytest.mark.looptime

PACED = Pacing(max_in_flight=2, min_gap=1.5, jitter=1.0)


def now() -> float:
    return asyncio.get_running_loop().time()


def start(
    rig: Rig, text: str = "hello", *, heartbeat: float = 3600.0, limits: Limits | None = None
) -> asyncio.Task[list[ReplyEvent]]:
    request = rig.ask(text)
    if limits is not None:
        request = replace(request, limits=limits)
    return asyncio.ensure_future(rig.run(request, heartbeat=heartbeat))


class Config:
    """The settings `reconfigure` reads (BackendConfig)."""

    def __init__(
        self, tokens: list[str], *, models: list[ModelSettings] | None = None, **accounts: object
    ) -> None:
        self.discord = DiscordSettings(
            bot_token="bot", guild_id=1, user_tokens=[UserTokenSettings(token=t) for t in tokens]
        )
        self.completion = COMPLETION
        self.accounts = AccountSettings(**accounts)  # type: ignore[arg-type]
        self.storage = StorageSettings()
        self.model_routes = models or [MODEL]


async def test_one_tokens_posts_keep_their_gap_and_its_in_flight_bound() -> None:
    async for rig in make_rig(tokens=1, pacing=PACED):
        rig.discord.script = lambda post: Reply(["slow answer"], first=4.0)
        tasks = [start(rig, f"q{n}") for n in range(5)]
        await rig.advance(1.0)
        status = rig.backend.status()
        assert (status.tokens[0].in_flight, status.queue.length) == (1, 4), "the next waits for the gap"
        assert len(rig.discord.prompts()) == 1
        await rig.advance(2.0)
        status = rig.backend.status()
        assert len(rig.discord.prompts()) == 2
        assert (status.tokens[0].in_flight, status.tokens[0].max_in_flight) == (2, 2)
        assert status.queue.length == 3, "the third waits for a reply to end"
        events = [await task for task in tasks]
        assert all(isinstance(e[-1], Finished) for e in events)
        stamps = [post.at for post in rig.discord.prompts()]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert len(stamps) == 5
        assert min(gaps) >= 1.5
        assert max(gaps) > 1.5, "with jitter on top"


async def test_the_least_busy_token_takes_the_next_request() -> None:
    async for rig in make_rig(tokens=3):
        rig.discord.script = lambda post: Reply(
            ["held" if "hold" in post.content else "quick"], first=20.0 if "hold" in post.content else 0.5
        )
        busy = [start(rig, "hold me") for _ in range(2)]
        await rig.discord.wait_for_prompts(2)
        quick = [await start(rig, "quick") for _ in range(4)]
        assert all(isinstance(e[-1], Finished) for e in quick)
        holding = {post.token for post in rig.discord.prompts() if "hold" in post.content}
        used = [post.token for post in rig.discord.prompts() if "quick" in post.content]
        assert len(holding) == 2, "two tokens, one slow reply each"
        assert set(used).isdisjoint(holding), "the quick requests went to the idle token"
        for task in busy:
            assert isinstance((await task)[-1], Finished)


async def test_waiters_queue_in_order_and_hear_how_many_are_ahead() -> None:
    async for rig in make_rig(tokens=1, pacing=Pacing(max_in_flight=1)):
        rig.discord.script = lambda post: Reply(["answer"], first=10.0)
        tasks = [start(rig, f"q{n}", heartbeat=4.0) for n in range(3)]
        await rig.advance(5.0)
        status = rig.backend.status().queue
        assert (status.length, status.limit) == (2, 100)
        results = [await task for task in tasks]
        assert Queued(ahead=0) in results[1]
        assert Queued(ahead=1) in results[2]
        assert Queued(ahead=0) in results[2], "it moved up"
        contents = [post.content for post in rig.discord.prompts()]
        assert [c.rsplit(" ", 1)[-1] for c in contents] == ["q0", "q1", "q2"], "first come, first served"


async def test_past_the_queue_bound_a_request_is_overloaded_and_posts_nothing() -> None:
    async for rig in make_rig(tokens=1, pacing=Pacing(max_in_flight=1), max_queue=1):
        rig.discord.script = lambda post: Reply(["answer"], first=10.0)
        first, second = start(rig, "one"), start(rig, "two")
        await rig.advance(1.0)
        threads = len(rig.discord.threads)
        with pytest.raises(Overloaded) as caught:
            rig.backend.check_capacity(Limits())
        assert caught.value.retry_after
        assert caught.value.retry_after >= 1
        with pytest.raises(Overloaded) as refused:
            await rig.run(rig.ask("three"))
        assert not refused.value.posted
        assert len(rig.discord.threads) == threads, "refused before making a thread"
        assert rig.backend.status().queue.full_since is not None
        await first
        await second
        assert rig.backend.status().queue.full_since is None, "cleared once the queue drained"


async def test_a_plain_request_waits_at_most_its_limit() -> None:
    async for rig in make_rig(tokens=1, pacing=Pacing(max_in_flight=1)):
        rig.discord.script = lambda post: Reply(["answer"], first=50.0)
        first = start(rig, "one")
        await rig.advance(1.0)
        began = now()
        with pytest.raises(Overloaded):
            await rig.run(replace(rig.ask("two"), limits=Limits(max_queue_seconds=30.0)))
        assert now() - began == pytest.approx(30.0)
        assert len(rig.discord.prompts()) == 1
        await first


async def test_a_daily_cap_moves_on_to_the_next_token_then_refuses() -> None:
    async for rig in make_rig(tokens=2, pacing=Pacing(daily_cap=1)):
        for _ in range(2):
            await rig.run(rig.ask())
        assert [t.state for t in rig.backend.status().tokens] == [TokenState.CAPPED, TokenState.CAPPED]
        with pytest.raises(CozeLimited) as caught:
            await rig.run(rig.ask())
        assert "daily_cap" in caught.value.message
        assert not caught.value.posted
        assert caught.value.retry_after == pytest.approx(12 * 3600, abs=60)
        assert rig.backend.status().models[0].tokens_available == 0


async def test_a_retry_after_a_refused_token_goes_ahead_of_the_queue() -> None:
    async for rig in make_rig(tokens=2, pacing=Pacing(max_in_flight=1)):
        rig.discord.script = lambda post: Reply(["answer"], first=5.0)
        rig.discord.post_failures.append(("user token #1", RestError("401", status=401)))
        first = start(rig, "first")
        second = start(rig, "second")
        await rig.advance(0.5)  # the first lost its token, and waits for the second's
        third = start(rig, "third")
        for task in (first, second, third):
            assert isinstance((await task)[-1], Finished)
        order = [post.content.rsplit(" ", 1)[-1] for post in rig.discord.prompts()]
        assert order == ["second", "first", "third"], "the retry went ahead of the newer request"
        assert next(t.state for t in rig.backend.status().tokens) is TokenState.INVALID


async def test_shutdown_ends_the_waiters() -> None:
    async for rig in make_rig(tokens=1, pacing=Pacing(max_in_flight=1)):
        rig.discord.script = lambda post: Reply(["answer"], first=100.0)
        first, second = start(rig, "one"), start(rig, "two")
        await rig.advance(1.0)
        rig.backend.begin_shutdown()
        for task in (first, second):
            with pytest.raises(ServerShutdown):
                await task
        assert len(rig.discord.prompts()) == 1
        assert rig.backend.status().state_since is not None


async def test_an_admin_disable_holds_and_enabling_brings_it_back() -> None:
    async for rig in make_rig(tokens=2):
        one = fingerprint("user token #1")
        report = rig.backend.set_token_enabled(one, False)
        assert (report.state, report.reason) == (TokenState.DISABLED, "disabled by an admin")
        for _ in range(2):
            await rig.run(rig.ask())
        assert set(rig.discord.tokens_used()) == {"user token #2"}
        await rig.writes.wait()
        assert (await rig.store.tokens())[one].disabled
        assert rig.backend.set_token_enabled(one, True).state is TokenState.HEALTHY
        with pytest.raises(UnknownToken):
            rig.backend.set_token_enabled("0" * 16, False)
        rig.backend.reconfigure(Config(["user token #1", "user token #2"]))
        rig.backend.set_token_enabled(one, False)
        rig.backend.reconfigure(Config(["user token #1", "user token #2"]))
        assert rig.backend.status().tokens[0].state is TokenState.DISABLED, "a reload keeps it"


async def test_checks_mark_a_revoked_token_invalid_and_a_restored_one_healthy() -> None:
    async for rig in make_rig(tokens=2):
        one = fingerprint("user token #1")
        rig.discord.revoked.add("user token #1")
        report = await rig.backend.check_token(one)
        assert (report.state, report.reason) == (TokenState.INVALID, "Discord answered 401 to /users/@me")
        assert rig.discord.posts == [], "a check posts nothing"
        rig.discord.revoked.clear()
        rig.backend.reconfigure(Config(["user token #1", "user token #2"], check_hours=0.01))
        rig.backend.start_checks()
        await rig.advance(0.011 * 3600)
        assert rig.backend.status().tokens[0].state is TokenState.HEALTHY
        with pytest.raises(UnknownToken):
            await rig.backend.check_token("nope")


async def test_a_check_that_cannot_reach_discord_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async for rig in make_rig(tokens=1):

        async def unreachable(credential: object) -> int:
            raise RestError("Discord could not be reached", status=None)

        rig.discord.user_id = unreachable  # type: ignore[method-assign]
        report = await rig.backend.check_token(fingerprint("user token #1"))
        assert report.state is TokenState.HEALTHY
        assert "could not reach Discord" in caplog.text


async def test_a_reload_adds_a_token_and_retires_one_mid_reply() -> None:
    async for rig in make_rig(tokens=2):
        rig.discord.script = lambda post: Reply(["slow"], first=10.0)
        task = start(rig, "held")
        await rig.discord.wait_for_prompts(1)
        holder = rig.discord.prompts()[0].token
        other = "user token #2" if holder == "user token #1" else "user token #1"
        rig.backend.reconfigure(Config([other, "user token #3"]))
        states = {t.label: t.state for t in rig.backend.status().tokens}
        assert states[holder] is TokenState.RETIRING
        rig.discord.script = lambda post: Reply(["quick"], first=0.5)
        for _ in range(4):
            await rig.run(rig.ask())
        assert holder not in rig.discord.tokens_used()[1:]
        assert "user token #3" in rig.discord.tokens_used()
        assert isinstance((await task)[-1], Finished), "the open reply finished"
        assert holder not in {t.label for t in rig.backend.status().tokens}, "it left with its last prompt"


async def test_a_reload_replaces_the_models() -> None:
    async for rig in make_rig(tokens=1):
        other = ModelSettings(name="two", coze_bot_id=777, channel_id=600)
        rig.backend.reconfigure(Config(["user token #1"], models=[MODEL, other], max_queue=5))
        assert [m.name for m in rig.backend.models] == ["coze", "two"]
        assert rig.backend.status().queue.limit == 5
        assert rig.backend.status().state_since is not None


async def test_a_repost_after_a_busy_notice_waits_for_the_tokens_gap() -> None:
    async for rig in make_rig(tokens=1, pacing=Pacing(min_gap=8.0)):
        replies = iter(
            [
                Reply(
                    ["There are too many users now. Please try again a bit later."], marker=False, first=0.1
                ),
                Reply(["at last"], first=0.1),
            ]
        )
        rig.discord.script = lambda post, replies=replies: next(replies)
        events = await rig.run(rig.ask())
        assert isinstance(events[-1], Finished)
        first, second = (post.at for post in rig.discord.prompts())
        assert second - first >= 8.0, "the busy pause alone (2 s) would have been too short"


async def test_a_caller_who_leaves_the_queue_leaves_no_trace() -> None:
    async for rig in make_rig(tokens=1, pacing=Pacing(max_in_flight=1)):
        rig.discord.script = lambda post: Reply(["answer"], first=10.0)
        first, second = start(rig, "one"), start(rig, "two")
        await rig.advance(1.0)
        assert rig.backend.status().queue.length == 1
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert rig.backend.status().queue.length == 0
        assert isinstance((await first)[-1], Finished)
        assert rig.backend.status().tokens[0].in_flight == 0
        await rig.run(rig.ask("three"))
        assert len(rig.discord.prompts()) == 2
