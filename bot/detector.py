"""When is Coze's reply finished? A pure state machine over create/edit events and a clock.

Coze streams by editing one message with the full text so far and, when done, usually adds a
row of follow-up suggestion buttons. The buttons often never come (auto-suggest off, refusals,
quota notices), so a quiet period without edits also ends the reply. The caller passes `now` to
every call and calls `tick()` at `deadline`; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.interface import Finished, FinishReason, TextDelta

# A reply over Discord's 2000-character cap continues in further messages; Coze cuts on line
# breaks, which Discord strips from the end of a message, so the join restores one.
MESSAGE_JOINER = "\n"


@dataclass(frozen=True, slots=True)
class ReplySnapshot:
    """The full current state of one reply message, from a create or an edit event."""

    message_id: int
    content: str
    # None: no components yet. A tuple, even empty: Coze's end-of-answer button row.
    buttons: tuple[str, ...] | None = None
    images: tuple[str, ...] = ()  # embeds' images and image attachments, in order


@dataclass(frozen=True, slots=True)
class NoReply:
    """Coze showed no sign of life in time."""


Step = TextDelta | Finished | NoReply


class CompletionDetector:
    def __init__(
        self, *, started_at: float, quiet_seconds: float, first_reply_timeout: float, max_reply_seconds: float
    ) -> None:
        self._quiet = quiet_seconds
        self._first_deadline = started_at + first_reply_timeout
        self._hard_deadline = started_at + max_reply_seconds
        self._contents: dict[int, str] = {}
        self._images: dict[int, tuple[str, ...]] = {}
        self._text = ""
        self._emitted = 0
        self._last_activity: float | None = None
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    @property
    def text(self) -> str:
        return self._text

    @property
    def _has_content(self) -> bool:
        return bool(self._text or self._images)

    @property
    def images(self) -> tuple[str, ...]:
        """Every image URL seen so far, in message order, each once (edits repeat them)."""
        ordered = (url for key in sorted(self._images) for url in self._images[key])
        return tuple(dict.fromkeys(ordered))

    @property
    def deadline(self) -> float | None:
        if self._done:
            return None
        if not self._contents:
            return min(self._first_deadline, self._hard_deadline)
        if self._has_content and self._last_activity is not None:
            return min(self._last_activity + self._quiet, self._hard_deadline)
        # A reply exists but is still empty: never end on quiet before the first content.
        return self._hard_deadline

    @property
    def hard_deadline(self) -> float:
        return self._hard_deadline

    def touch(self, now: float) -> None:
        """Restart the quiet period: the gateway was away, so the silence proved nothing."""
        if not self._done and self._last_activity is not None:
            self._last_activity = max(self._last_activity, now)

    def feed(self, snapshot: ReplySnapshot, now: float) -> list[Step]:
        if self._done:
            # Follow-up messages after the marker are suggestions, never answer text.
            return []
        self._last_activity = now
        if self._contents.get(snapshot.message_id) != snapshot.content:
            self._contents[snapshot.message_id] = snapshot.content
            self._text = self._join()
        if snapshot.images:
            self._images[snapshot.message_id] = snapshot.images
        steps: list[Step] = []
        if delta := self._delta():
            steps.append(delta)
        if snapshot.buttons is not None:
            steps.append(self._finish("stop", snapshot.buttons))
        return steps

    def tick(self, now: float) -> list[Step]:
        deadline = self.deadline
        if deadline is None or now < deadline:
            return []
        if now >= self._hard_deadline:
            return [self._finish("length", ())] if self._has_content else self._no_reply()
        if not self._contents:
            return self._no_reply()
        return [self._finish("stop", ())]

    def _join(self) -> str:
        if len(self._contents) == 1:
            return next(iter(self._contents.values()))
        # Snowflake ids grow with time, so id order is Coze's writing order.
        return MESSAGE_JOINER.join(self._contents[key] for key in sorted(self._contents))

    def _delta(self) -> TextDelta | None:
        # Emit what lies beyond the length already sent. When an edit rewrites earlier text
        # (a link being formatted), a stream cannot take text back: the final content carries
        # the rewrite, the stream only the new tail.
        if len(self._text) <= self._emitted:
            return None
        delta = TextDelta(self._text[self._emitted :])
        self._emitted = len(self._text)
        return delta

    def _finish(self, reason: FinishReason, suggestions: tuple[str, ...]) -> Finished:
        self._done = True
        return Finished(reason=reason, content=self._text, suggestions=suggestions, images=self.images)

    def _no_reply(self) -> list[Step]:
        self._done = True
        return [NoReply()]
