"""Alerts (issue 13): each kind sent once to a real receiver on loopback, throttled, resolved.

The watcher is stepped by hand against a clock the test moves; `step` waits for the deliveries
it started, so "nothing was sent" is checked without waiting for time to pass.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from yarl import URL

from bot.status import BackendStatus, BridgeState, IntentMissing, ModelStatus, QueueStatus, TokenState
from bridge_api.alert_rules import KINDS, Alert, duration
from bridge_api.alerts import alerts_ctx, is_discord_webhook, payload
from tests.alert_rig import SECRET, START, Receiver, StatusMock, by_kind, receiving, running, settings, token


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as receiving_one:
        yield receiving_one


async def test_each_kind_fires_once_and_its_resolved_arrives(receiver: Receiver) -> None:
    async with running(settings(receiver, receiver.url(f"/hook/{SECRET}"))) as rig:
        await rig.step()
        assert receiver.take() == [], "nothing is open"
        mock, now = rig.backend, rig.clock.now()
        midnight = datetime(2026, 12, 2, tzinfo=UTC)
        mock.tokens = [
            token(1, TokenState.INVALID, reason="Discord answered 401 to /users/@me"),
            token(2, resting_models={"coze": midnight}),
        ]
        mock.model_statuses = [ModelStatus("coze", now + timedelta(hours=12), tokens_available=0)]
        mock.state, mock.state_since = BridgeState.DEGRADED, now - timedelta(seconds=75)
        mock.queue = QueueStatus(length=100, limit=100, full_since=now - timedelta(minutes=3))
        mock.intent_missing = IntentMissing(now - timedelta(minutes=1), "blank_messages")
        await rig.step()
        sent = by_kind(receiver.take())
        assert (
            set(sent)
            == set(KINDS)
            == {
                "pool_empty",
                "token_invalid",
                "gateway_down",
                "model_resting",
                "queue_full",
                "intent_missing",
            }
        )
        invalid = token(1).masked
        assert sent["token_invalid"]["message"] == f"{invalid} is invalid: Discord answered 401 to /users/@me"
        assert sent["token_invalid"]["details"]["conditions"][0]["label"] == "user token #1"
        assert sent["gateway_down"]["message"].startswith("The Discord gateway has been down for 75 s")
        assert sent["model_resting"]["message"].startswith("Model 'coze' is resting until 00:00 UTC")
        assert sent["pool_empty"]["message"] == (
            "No user token can post for model 'coze': 1 invalid, 1 resting until 00:00 UTC"
        )
        assert "Message Content Intent" in sent["intent_missing"]["message"]
        assert "100 of 100" in sent["queue_full"]["message"]
        assert {kind: body["severity"] for kind, body in sent.items()} == {
            "pool_empty": "critical",
            "token_invalid": "warning",
            "gateway_down": "critical",
            "model_resting": "warning",
            "queue_full": "warning",
            "intent_missing": "critical",
        }
        for body in sent.values():
            assert datetime.fromisoformat(body["at"]) == now
            assert body["details"]["resolved"] is False
            assert token(1).id not in str(body), "fingerprint prefixes only"

        await rig.step(5)
        assert receiver.take() == [], "still open: not said again"

        mock.tokens = [token(1), token(2)]
        mock.model_statuses = [ModelStatus("coze", None, tokens_available=2)]
        mock.state, mock.state_since = BridgeState.READY, rig.clock.now()
        mock.queue, mock.intent_missing = QueueStatus(limit=100), None
        await rig.step()
        resolved = by_kind(receiver.take())
        assert set(resolved) == set(sent)
        assert all(body["severity"] == "info" and body["details"]["resolved"] for body in resolved.values())
        assert resolved["token_invalid"]["message"] == f"{invalid} is no longer invalid"
        assert resolved["gateway_down"]["message"] == "The Discord gateway is back"
        await rig.step(120)
        assert receiver.take() == []


async def test_the_gateway_counts_as_down_after_gateway_down_seconds_from_when_it_was_seen(
    receiver: Receiver,
) -> None:
    async with running(settings(receiver, receiver.url("/hook"), gateway_down_seconds=60)) as rig:
        rig.backend.state = BridgeState.CONNECTING  # and no state_since: from when the watcher saw it
        await rig.step()
        await rig.step(59)
        rig.backend.state = BridgeState.DEGRADED  # still down: the count goes on
        await rig.step(0.5)
        assert receiver.take() == []
        await rig.step(0.5)
        [down] = receiver.take()
        assert down.body["message"] == (
            "The Discord gateway has been down for 60 s (since 12:00 UTC; the bridge is degraded)"
        )
        assert down.body["details"]["conditions"] == [
            {"state": "degraded", "since": START.isoformat(), "down_seconds": 60}
        ]
        # Shutting down is neither an outage nor a recovery.
        rig.backend.begin_shutdown()
        await rig.step(600)
        assert receiver.take() == []


async def test_the_throttle_folds_a_kind_into_one_message_per_interval(receiver: Receiver) -> None:
    async with running(settings(receiver, receiver.url("/hook"), min_interval_minutes=1)) as rig:
        mock = rig.backend
        first, second = token(1, TokenState.INVALID, reason="401"), token(2, TokenState.INVALID, reason="403")
        mock.tokens = [first, token(2)]
        await rig.step()
        assert [post.body["message"] for post in receiver.take()] == [f"{first.masked} is invalid: 401"]

        mock.tokens = [first, second]
        await rig.step(10)
        assert receiver.take() == [], "a second token within the interval waits"
        mock.tokens = [token(1), second]
        await rig.step(20)
        [healed] = receiver.take()
        assert healed.body["message"] == f"{first.masked} is no longer invalid", "resolved has its own budget"
        mock.tokens = [first, second]
        await rig.step(29)
        assert receiver.take() == [], "opened again within the interval: nothing"

        await rig.step(1)
        [folded] = receiver.take()
        assert folded.body["message"] == f"{first.masked} is invalid: 401\n{second.masked} is invalid: 403"
        assert [c["label"] for c in folded.body["details"]["conditions"]] == [
            "user token #1",
            "user token #2",
        ]

        mock.tokens = [token(1), token(2)]
        await rig.step(1)
        assert receiver.take() == [], "the last resolved was 31 s ago"
        mock.tokens = [first, token(2)]
        await rig.step(9)
        await rig.step(20)
        [resolved] = receiver.take()
        assert resolved.body["message"] == f"{second.masked} is no longer invalid", (
            "the first was back before its resolved could go out: to the receiver it never left"
        )


async def test_a_condition_gone_before_the_throttle_lets_it_out_is_never_named(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running(settings(receiver, receiver.url("/hook"))) as rig:
        rig.backend.tokens = [token(1, TokenState.INVALID)]
        await rig.step()
        rig.backend.tokens = [token(1, TokenState.INVALID), token(2, TokenState.INVALID)]
        await rig.step(1)
        rig.backend.tokens = [token(1, TokenState.INVALID), token(2)]
        await rig.step(1)
        await rig.step(60)
        assert [post.body["message"] for post in receiver.take()] == [f"{token(1).masked} is invalid"]
        assert "held back by alerts.min_interval_minutes" in caplog.text
        assert "cleared before the throttle let it out" in caplog.text


async def test_a_discord_webhook_gets_content(receiver: Receiver) -> None:
    # Discord's webhook path on the host discord.api_base names (here, the receiver) is Discord.
    async with running(settings(receiver, receiver.url(f"/api/webhooks/123/{SECRET}"))) as rig:
        midnight = datetime(2026, 12, 2, tzinfo=UTC)
        rig.backend.tokens = [
            token(1, TokenState.INVALID),
            token(2, TokenState.INVALID),
            token(3, resting_models={"coze": midnight}),
        ]
        rig.backend.model_statuses = [ModelStatus("coze", None, tokens_available=0)]
        await rig.step()
        posts = receiver.take()
        assert {post.path for post in posts} == {f"/api/webhooks/123/{SECRET}"}
        contents = sorted(post.body["content"] for post in posts)
        assert contents == [
            "[critical] No user token can post for model 'coze': 2 invalid, 1 resting until 00:00 UTC",
            f"[warning] {token(1).masked} is invalid\n{token(2).masked} is invalid",
        ]
        assert all(post.body["allowed_mentions"] == {"parse": []} for post in posts)
        rig.backend.model_statuses = [ModelStatus("coze", None, tokens_available=1)]
        await rig.step()
        [resolved] = receiver.take()
        assert resolved.body["content"] == "[resolved] User tokens can post for model 'coze' again"


@pytest.mark.parametrize(
    ("url", "discord"),
    [
        ("https://discord.com/api/webhooks/1/abc", True),
        ("https://discordapp.com/api/webhooks/1/abc", True),
        ("https://canary.discord.com/api/v10/webhooks/1/abc?thread_id=5", True),
        ("https://ptb.discordapp.com/api/webhooks/1/abc/", True),
        ("http://discord.com/api/webhooks/1/abc", False),
        ("https://discord.com.evil.example/api/webhooks/1/abc", False),
        ("https://discord.com/api/webhooks/1/abc/slack", False),
        ("https://hooks.example.com/api/webhooks/1/abc", False),
        ("http://127.0.0.1:9000/api/webhooks/1/abc", False),
    ],
)
def test_which_urls_are_discord_webhooks(url: str, discord: bool) -> None:
    assert is_discord_webhook(URL(url), URL("https://discord.com/api/v10")) is discord


def test_discord_content_stays_within_2000_characters() -> None:
    alert = Alert("token_invalid", False, "x" * 3000, (), START)
    content = payload(alert, discord=True)["content"]
    assert len(content) == 2000
    assert content.endswith("…")


@pytest.mark.parametrize(("seconds", "said"), [(75, "75 s"), (300, "5 min"), (4 * 3600, "4 h")])
def test_durations_read_plainly(seconds: float, said: str) -> None:
    assert duration(seconds) == said


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("target", "logged"),
    [
        ("dead", "cannot connect: Connection refused"),
        ("/broken", "the webhook answered 500"),
        ("/slow", "no answer within 0.3 s"),
    ],
)
async def test_a_failed_delivery_delays_nothing_and_is_logged_once_without_the_url(
    receiver: Receiver, caplog: pytest.LogCaptureFixture, target: str, logged: str
) -> None:
    caplog.set_level(logging.DEBUG)
    base = f"http://127.0.0.1:{free_port()}" if target == "dead" else receiver.base
    url = f"{base}{'' if target == 'dead' else target}/{SECRET}"
    async with running(settings(receiver, url, timeout_seconds=0.3)) as rig:
        rig.backend.intent_missing = IntentMissing(START, "gateway_refused")
        rig.watcher.tick()  # returns at once: the delivery is in the background
        if target == "/slow":
            await receiver.arrived.get()  # the receiver holds it; the watcher goes on regardless
            rig.backend.queue = QueueStatus(length=5, limit=5, full_since=START)
            rig.watcher.tick()
            await receiver.arrived.get()
        await rig.watcher.deliveries.wait()
        failures = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
        expected = 2 if target == "/slow" else 1
        assert len(failures) == expected
        assert all(logged in failure for failure in failures)
        assert len(receiver.posts) == (0 if target == "dead" else expected), "never retried"
        await rig.step(3600)
    assert SECRET not in caplog.text
    assert base.removeprefix("http://") not in caplog.text


async def test_a_reload_applies_a_new_url_and_interval_at_once(receiver: Receiver) -> None:
    async with running(settings(receiver, receiver.url("/first"))) as rig:
        rig.backend.intent_missing = IntentMissing(START, "blank_messages")
        await rig.step()
        assert [post.path for post in receiver.take()] == ["/first"]

        rig.reload(settings(receiver, receiver.url("/second")))
        rig.backend.queue = QueueStatus(length=3, limit=3, full_since=START)
        await rig.step()
        assert [post.path for post in receiver.take()] == ["/second"]

        rig.backend.tokens = [token(1, TokenState.INVALID), token(2, TokenState.INVALID)]
        await rig.step()
        rig.backend.tokens = [
            token(1, TokenState.INVALID),
            token(2, TokenState.INVALID),
            token(3, TokenState.INVALID),
        ]
        await rig.step()
        assert len(receiver.take()) == 1, "a message for the two, the third held back"
        rig.reload(settings(receiver, receiver.url("/second"), min_interval_minutes=0))
        await rig.step()
        [third] = receiver.take()
        assert third.body["message"] == f"{token(3).masked} is invalid"

        # No URL: no alerts, and the status is not even read.
        rig.reload(settings(receiver, None))
        calls = rig.backend.status_calls
        await rig.step()
        assert rig.backend.status_calls == calls
        # Set again: what is open then is named afresh.
        rig.reload(settings(receiver, receiver.url("/third")))
        await rig.step()
        assert {post.body["kind"] for post in receiver.take()} == {
            "intent_missing",
            "queue_full",
            "token_invalid",
        }


@pytest.mark.parametrize("url", [f"mailto:{SECRET}@example.com", f"http://[{SECRET}/hook"])
async def test_a_url_that_is_not_http_is_named_once_and_sends_nothing(
    receiver: Receiver, caplog: pytest.LogCaptureFixture, url: str
) -> None:
    async with running(settings(receiver, url)) as rig:
        rig.backend.intent_missing = IntentMissing(START, "blank_messages")
        await rig.step()
        await rig.step()
        assert rig.backend.status_calls == 0
    assert [r.getMessage() for r in caplog.records if "webhook_url" in r.getMessage()] == [
        "alerts.webhook_url is not an http(s) URL: no alerts are sent"
    ]
    assert SECRET not in caplog.text


class FlakyMock(StatusMock):
    """Its status fails twice before it answers."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 2

    def status(self) -> BackendStatus:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("status unavailable")
        return super().status()


async def test_the_watcher_ticks_by_itself_and_survives_a_failing_status(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    backend = FlakyMock()
    backend.intent_missing = IntentMissing(START, "blank_messages")
    async with running(settings(receiver, receiver.url("/hook")), backend, interval=0.01):
        async with asyncio.timeout(5):
            post = await receiver.arrived.get()
        assert post.body["kind"] == "intent_missing"
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("the alert watcher cannot read the status") == 1
    assert "the alert watcher reads the status again" in messages


async def test_the_pool_empty_message_says_why_each_token_cannot_post(receiver: Receiver) -> None:
    async with running(settings(receiver, receiver.url("/hook"))) as rig:
        tomorrow, later = datetime(2026, 12, 2, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC)
        rig.backend.tokens = [
            token(1, TokenState.CAPPED, resting_until=tomorrow),
            token(2, TokenState.RESTING, resting_until=later),
            token(3, TokenState.DISABLED, reason="disabled by an admin"),
            token(4, TokenState.RETIRING),
        ]
        rig.backend.model_statuses = [ModelStatus("coze", None, tokens_available=0)]
        await rig.step()
        [empty] = receiver.take()
        assert empty.body["message"] == (
            "No user token can post for model 'coze': 1 capped until 00:00 UTC, "
            "1 resting until 2026-12-03 00:00 UTC, 1 disabled, 1 retiring"
        )
        assert empty.body["details"]["conditions"][0]["tokens"][1] == {
            "token": token(2).id[:8],
            "label": "user token #2",
            "state": "resting",
            "until": later.isoformat(),
        }


async def test_alerts_ctx_looks_at_once_and_then_every_second(receiver: Receiver) -> None:
    backend = StatusMock()
    backend.intent_missing = IntentMissing(START, "blank_messages")
    async with running(settings(receiver, receiver.url("/hook")), backend, context=alerts_ctx):
        async with asyncio.timeout(5):
            post = await receiver.arrived.get()
        assert post.body["kind"] == "intent_missing"
