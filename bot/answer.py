"""One answer: the prompt posted with the pool's tokens in turn, its reply followed, and said
"continue" to while Coze cuts it off, the parts stitched into one completion."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable, Sequence
from contextlib import aclosing
from dataclasses import replace

from bot.config import ModelSettings
from bot.continuation import CONTINUE_PROMPT, Transcript, is_cut_off
from bot.follow import LimitNotice, follow_reply
from bot.interface import (
    ChatTurn,
    CozeBusy,
    Finished,
    ImageFile,
    ImageKeeper,
    PromptTooLong,
    ReplyEvent,
    TextDelta,
)
from bot.ledger import Attempts, InvalidToken
from bot.probe import Probing, Verdict
from bot.prompt import render_prompt, split_prompt
from bot.reply_parts import ReplyParts
from bot.router import Inbox

# What makes a prompt go out again: with another token, or after a pause. (A confirmed limit
# notice does too.)
RETRYABLE = (InvalidToken, CozeBusy)


class Answering:
    def __init__(self, parts: ReplyParts, probing: Probing) -> None:
        self._parts = parts
        self._probing = probing

    async def answer(
        self,
        inbox: Inbox,
        model: ModelSettings,
        turns: Sequence[ChatTurn],
        chunks: list[str],
        heartbeat: float,
        *,
        attempts: Attempts,
        asked: str = "",
        max_waiting: int | None = None,
    ) -> AsyncGenerator[ReplyEvent, None]:
        """The whole answer to `chunks` (the turns' prompt messages): one reply, or several
        stitched when Coze cut it off, posted with the token `attempts` holds (and the next
        ones). `asked` is everything the caller wrote; `max_waiting` refuses the first post when
        that many requests wait for a slot already."""
        mention = f"<@{model.coze_bot_id}>"
        files = [image for turn in turns for image in turn.images]
        transcript = Transcript()
        images: list[str] = []
        budget = self._parts.completion.auto_continue
        while True:
            finished: Finished | None = None
            exchange = self._exchange(
                inbox,
                model,
                chunks,
                files,
                heartbeat,
                transcript,
                attempts,
                hide_ellipsis=transcript.parts < budget,
                asked=asked,
                max_waiting=max_waiting,
            )
            max_waiting = None
            async with aclosing(exchange):
                async for event in exchange:
                    if isinstance(event, Finished):
                        finished = event
                    else:
                        yield event
            assert finished is not None
            images.extend(finished.images)
            if transcript.parts < budget and finished.reason == "stop" and is_cut_off(finished.content):
                transcript.next_part(finished.content)
                chunks, files = [f"{mention} {CONTINUE_PROMPT}"], []
                continue
            text = transcript.shown(finished.content, final=True, hide_ellipsis=False)
            # The links at the end wait (a few seconds at most) for the bridge's lasting copies.
            lasting = await kept(self._parts.images, linked_images(text, images))
            content = with_image_links(text, [lasting.get(url, url) for url in images])
            if rest := transcript.delta(content):
                yield TextDelta(rest)
            shown = tuple(dict.fromkeys(lasting.get(url, url) for url in images))
            yield replace(finished, content=content, images=shown)
            return

    async def _exchange(
        self,
        inbox: Inbox,
        model: ModelSettings,
        chunks: list[str],
        files: Sequence[ImageFile],
        heartbeat: float,
        transcript: Transcript,
        attempts: Attempts,
        *,
        hide_ellipsis: bool,
        asked: str,
        max_waiting: int | None,
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Post one prompt and follow its reply, moving to the next token when one is spent."""
        admission = self._parts.posting.admission
        ledger = self._parts.ledger
        attempts.new_exchange()
        while True:
            async with aclosing(attempts.token(heartbeat, posted=inbox.posted)) as taking:
                async for queued in taking:
                    yield queued
            token = attempts.lease.token
            assert token is not None
            try:
                # The token's gap first, then a posting slot: a slot is never held through a gap.
                async with ledger.pacing(attempts.lease) as paced:
                    async with aclosing(admission.wait(heartbeat, max_waiting=max_waiting)) as waiting:
                        async for queued in waiting:
                            yield queued
                    max_waiting = None
                    try:
                        async with self._parts.stopping.cut_short(posted=True):
                            await self._parts.posting.post(inbox, model, chunks, files, token)
                    finally:
                        admission.release()
                    paced.sent = True
                reply = follow_reply(
                    inbox,
                    self._parts.gateway,
                    self._parts.completion,
                    heartbeat=heartbeat,
                    transcript=transcript,
                    hide_ellipsis=hide_ellipsis,
                    asked=asked,
                )
                async with aclosing(reply):
                    async for event in reply:
                        yield event
                return
            except LimitNotice as notice:
                verdict = Verdict(confirmed=True)
                probe = self._probing.confirm(model, attempts.lease, notice.trouble, heartbeat)
                async with aclosing(probe):
                    async for step in probe:
                        if isinstance(step, Verdict):
                            verdict = step
                        else:
                            yield step
                if not verdict.confirmed:
                    yield notice.reply  # what the caller had Coze say
                    return
                pause = attempts.failed(notice.error(), self._parts.clock())
            except RETRYABLE as exc:
                pause = attempts.failed(exc, self._parts.clock())
            # Replies to the posts before this one no longer count, whatever went wrong.
            self._parts.router.retire_prompts(inbox)
            if pause:
                await self._parts.stopping.pause(pause)


def prompt_messages(turns: Sequence[ChatTurn], model: ModelSettings, limit: int) -> list[str]:
    """The Discord messages that post `turns`; PromptTooLong past `limit`, before any is posted."""
    chunks = split_prompt(render_prompt(turns), f"<@{model.coze_bot_id}>")
    if len(chunks) > limit:
        raise PromptTooLong(
            f"The prompt would take {len(chunks)} Discord messages of 2000 characters; at most {limit} "
            "may be posted for one request. Shorten the messages or start a new conversation."
        )
    return chunks


def linked_images(text: str, urls: Iterable[str]) -> list[str]:
    """The images `with_image_links` appends: those not already in the text, once each."""
    return [url for url in dict.fromkeys(urls) if url not in text]


async def kept(keeper: ImageKeeper | None, urls: Sequence[str]) -> dict[str, str]:
    """The lasting URL of each image, all asked at once (the keeper bounds its own wait)."""
    if keeper is None or not urls:
        return {}
    lasting = await asyncio.gather(*(keeper.keep(url) for url in urls))
    return dict(zip(urls, lasting, strict=True))


def with_image_links(text: str, urls: Iterable[str]) -> str:
    """The answer with each image not already in its text appended as a markdown image link."""
    seen: set[str] = set()
    links: list[str] = []
    for url in urls:
        if url in seen or url in text:
            continue
        seen.add(url)
        links.append(f"![image]({url})")
    if not links:
        return text
    return (text.rstrip() + "\n\n" if text.strip() else "") + "\n".join(links)
