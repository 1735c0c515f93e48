"""Hands each Coze message to the request waiting for it; everything else is dropped."""

from __future__ import annotations

import asyncio

from bot.detector import ReplySnapshot
from bot.listener import CozeMessage


class Wake:
    """What a reader's alarm puts in its inbox: time to look at the clock."""

    __slots__ = ()


WAKE = Wake()


class Inbox:
    """The Coze messages of one request, in arrival order."""

    __slots__ = ("channel_id", "posted", "prompt_ids", "queue")

    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id
        self.prompt_ids: set[int] = set()
        self.posted = False  # some prompt of this request reached Discord
        # None: the bridge is shutting down.
        self.queue: asyncio.Queue[ReplySnapshot | Wake | None] = asyncio.Queue()


class ReplyRouter:
    def __init__(self) -> None:
        self._by_channel: dict[int, Inbox] = {}
        self._by_prompt: dict[int, Inbox] = {}

    def open(self, channel_id: int) -> Inbox:
        """Start collecting; call before the prompt is posted, as Coze may answer first."""
        inbox = Inbox(channel_id)
        self._by_channel[channel_id] = inbox
        return inbox

    def add_prompt(self, inbox: Inbox, message_id: int) -> None:
        inbox.prompt_ids.add(message_id)
        inbox.posted = True
        self._by_prompt[message_id] = inbox

    def retire_prompts(self, inbox: Inbox) -> None:
        """Before posting again: replies to the earlier posts no longer count, queued or not."""
        for prompt_id in inbox.prompt_ids:
            self._by_prompt.pop(prompt_id, None)
        inbox.prompt_ids = set()
        shutting_down = False
        while not inbox.queue.empty():
            shutting_down |= inbox.queue.get_nowait() is None
        if shutting_down:
            inbox.queue.put_nowait(None)

    def close(self, inbox: Inbox) -> None:
        if self._by_channel.get(inbox.channel_id) is inbox:
            del self._by_channel[inbox.channel_id]
        for prompt_id in inbox.prompt_ids:
            self._by_prompt.pop(prompt_id, None)

    def deliver(self, message: CozeMessage) -> None:
        # Coze replies inline to the prompt; its continuation messages may not carry the
        # reference, so the request's thread is the fallback.
        reference = message.reference_id
        inbox = self._by_prompt.get(reference) if reference is not None else None
        if inbox is None:
            inbox = self._by_channel.get(message.channel_id)
            if inbox is None or (reference is not None and reference not in inbox.prompt_ids):
                return  # someone else's conversation, or a reply to an earlier post of ours
        inbox.queue.put_nowait(message.snapshot)

    def open_inboxes(self) -> list[Inbox]:
        return list(self._by_channel.values())

    def end_all(self) -> None:
        """Wake every waiting request so it can end its reply cleanly (shutdown)."""
        for inbox in self._by_channel.values():
            inbox.queue.put_nowait(None)

    def __len__(self) -> int:
        return len(self._by_channel)
