"""Following one Coze reply in a request's inbox: deltas, keep-alives, and its end.

The completion detector decides when the reply is over; this loop feeds it and sleeps until
its next deadline (or the heartbeat), in the request's own task, with no task per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import replace

from bot.config import CompletionSettings
from bot.continuation import Transcript
from bot.coze_texts import Holdback, Trouble, classify
from bot.detector import CompletionDetector, ReplySnapshot, Step
from bot.gateway_state import GatewayState
from bot.interface import (
    CozeBusy,
    CozeLimited,
    Finished,
    Idle,
    ModelLimited,
    ReplyEvent,
    ReplyTimeout,
    ServerShutdown,
    TextDelta,
    UpstreamError,
)
from bot.router import WAKE, Inbox, Wake
from bot.status import BridgeState


async def follow_reply(
    inbox: Inbox,
    gateway: GatewayState,
    completion: CompletionSettings,
    *,
    heartbeat: float,
    transcript: Transcript,
    hide_ellipsis: bool,
    asked: str = "",
) -> AsyncGenerator[ReplyEvent, None]:
    """Yield what the client may see of this reply, then its `Finished` (the part's own text).

    Coze's trouble notices raise instead of finishing (a limit raises `LimitNotice`). `transcript` stitches this reply onto
    earlier parts of the same answer; with `hide_ellipsis` a trailing ellipsis stays unseen.
    A notice whose words are in `asked` (the caller's own) is an answer like any other.
    """
    loop = asyncio.get_running_loop()
    detector = CompletionDetector(
        started_at=loop.time(),
        quiet_seconds=completion.quiet_seconds,
        first_reply_timeout=completion.first_reply_timeout,
        max_reply_seconds=completion.max_reply_seconds,
    )
    holdback = Holdback()
    queue = inbox.queue
    alarm = _Alarm(loop, queue)
    epoch = gateway.epoch
    quiet_since = loop.time()  # the last event, or the last keep-alive
    try:
        while (deadline := detector.deadline) is not None:
            if queue.empty():
                alarm.at(min(_due(detector, deadline, gateway), quiet_since + heartbeat))
            item = await queue.get()
            now = loop.time()
            if isinstance(item, Wake):
                if gateway.epoch != epoch:
                    epoch = gateway.epoch
                    detector.touch(now)
                    continue
                if now < _due(detector, deadline, gateway):
                    if now >= quiet_since + heartbeat:
                        quiet_since = now
                        yield Idle()
                    continue  # or an alarm set for a deadline that has since moved on
                steps = detector.tick(now)
            else:
                quiet_since = now
                steps = _feed(detector, item, now)
            for step in steps:
                if isinstance(step, TextDelta):
                    shown = transcript.shown(
                        holdback.visible(detector.text), final=False, hide_ellipsis=hide_ellipsis
                    )
                    if text := transcript.delta(shown):
                        yield TextDelta(text)
                elif isinstance(step, Finished):
                    yield _checked(step, asked)
                    return
                else:
                    raise ReplyTimeout(
                        f"the Coze bot did not answer within {completion.first_reply_timeout:g}s", posted=True
                    )
    finally:
        alarm.cancel()


def _due(detector: CompletionDetector, deadline: float, gateway: GatewayState) -> float:
    # While the gateway is away only the hard cap counts: silence proves nothing.
    return deadline if gateway.state is BridgeState.READY else detector.hard_deadline


class _Alarm:
    """One timer per reply that wakes its reader, moved only when it must ring earlier.

    A timeout around each wait would make and cancel a timer per Coze edit: at a thousand
    open streams that churn is a measurable share of the loop.
    """

    __slots__ = ("_handle", "_loop", "_queue")

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[ReplySnapshot | Wake | None]):
        self._loop = loop
        self._queue = queue
        self._handle: asyncio.TimerHandle | None = None

    def at(self, when: float) -> None:
        if self._handle is not None:
            if self._handle.when() <= when:
                return  # it rings early; the reader looks at the clock and waits on
            self._handle.cancel()
        self._handle = self._loop.call_at(when, self._ring)

    def _ring(self) -> None:
        self._handle = None
        self._queue.put_nowait(WAKE)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _feed(detector: CompletionDetector, snapshot: ReplySnapshot | None, now: float) -> list[Step]:
    if snapshot is None:
        raise ServerShutdown("the bridge is shutting down; send the request again", posted=True)
    return detector.feed(snapshot, now)


class LimitNotice(Exception):
    """Coze's reply says a limit is reached. Coze also says what a caller dictates, so the
    backend confirms it (`bot.probe`) before resting anything; unconfirmed, `reply` is the answer."""

    def __init__(self, trouble: Trouble, reply: Finished) -> None:
        super().__init__(trouble.value)
        self.trouble = trouble
        self.reply = reply

    def error(self) -> CozeLimited | ModelLimited:
        notice = coze_notice(self.reply.content)
        if self.trouble is Trouble.CREATOR_LIMIT:
            return ModelLimited(
                "the Coze bot's owner has reached Coze's message limit", posted=True, notice=notice
            )
        return CozeLimited(
            "the user token has reached its daily limit of Coze messages", posted=True, notice=notice
        )


# Coze's notices are a sentence or two; a reply that starts like one may go on for pages.
NOTICE_CHARS = 1000


def coze_notice(text: str) -> str:
    """Coze's notice as errors carry it (`BridgeError.notice`): whole, unless a caller made it long."""
    text = text.strip()
    return text if len(text) <= NOTICE_CHARS else text[:NOTICE_CHARS] + "..."


def _checked(finished: Finished, asked: str) -> Finished:
    """A finished reply, unless it is Coze's trouble notice: then the matching error."""
    trouble = classify(finished.content, asked=asked)
    if trouble in (Trouble.DAILY_LIMIT, Trouble.CREATOR_LIMIT):
        raise LimitNotice(trouble, finished)
    if trouble is Trouble.BUSY:
        raise CozeBusy(
            "Coze is busy (too many users) and did not answer",
            posted=True,
            notice=coze_notice(finished.content),
        )
    if trouble is Trouble.UPSTREAM:
        raise UpstreamError(
            "Coze answered with an error notice instead of a reply",
            posted=True,
            notice=coze_notice(finished.content),
        )
    if trouble is Trouble.REFUSAL:
        return replace(finished, reason="content_filter")
    return finished
