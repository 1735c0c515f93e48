"""Hands each Coze message to the request waiting for it; everything else is dropped."""

from __future__ import annotations

import asyncio

from bot.detector import ReplySnapshot
from bot.payloads import CozeMessage

# Coze edits its reply every half second or so; REST is never that many edits late.
EARLY_LIMIT = 200


class Wake:
    """What a reader's alarm puts in its inbox: time to look at the clock."""

    __slots__ = ()


WAKE = Wake()


class Inbox:
    """The Coze messages of one request, in arrival order."""

    __slots__ = ("channel_id", "early", "posted", "prompt_ids", "queue", "retired")

    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id
        self.prompt_ids: set[int] = set()
        self.retired: set[int] = set()  # earlier posts of this request, whose replies no longer count
        # Replies to a post whose id REST has not returned yet: the gateway can be faster.
        self.early: list[CozeMessage] = []
        self.posted = False  # some prompt of this request reached Discord
        # None: the bridge is shutting down.
        self.queue: asyncio.Queue[ReplySnapshot | Wake | None] = asyncio.Queue()


class ReplyRouter:
    def __init__(self) -> None:
        self._by_channel: dict[int, Inbox] = {}
        self._by_prompt: dict[int, Inbox] = {}
        self._ended = False

    def open(self, channel_id: int) -> Inbox:
        """Start collecting; call before the prompt is posted, as Coze may answer first."""
        inbox = Inbox(channel_id)
        self._by_channel[channel_id] = inbox
        if self._ended:
            inbox.queue.put_nowait(None)  # opened during shutdown: it ends at once
        return inbox

    def add_prompt(self, inbox: Inbox, message_id: int) -> None:
        inbox.prompt_ids.add(message_id)
        inbox.posted = True
        self._by_prompt[message_id] = inbox
        early, inbox.early = inbox.early, []
        for message in early:
            if message.reference_id == message_id:
                inbox.queue.put_nowait(message.snapshot)
            else:
                inbox.early.append(message)

    def retire_prompts(self, inbox: Inbox) -> None:
        """Before posting again: replies to the earlier posts no longer count, queued or not."""
        for prompt_id in inbox.prompt_ids:
            self._by_prompt.pop(prompt_id, None)
        inbox.retired |= inbox.prompt_ids
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
            if inbox is None:
                return  # someone else's conversation
            if reference is not None and reference not in inbox.prompt_ids:
                if reference not in inbox.retired and len(inbox.early) < EARLY_LIMIT:
                    inbox.early.append(message)  # handed over when REST gives us the prompt's id
                return
        inbox.queue.put_nowait(message.snapshot)

    def open_inboxes(self) -> list[Inbox]:
        return list(self._by_channel.values())

    def wake_all(self) -> None:
        """Have every waiting request look at the clock and the gateway again."""
        for inbox in self._by_channel.values():
            inbox.queue.put_nowait(WAKE)

    def end_all(self) -> None:
        """Wake every waiting request so it can end its reply cleanly (shutdown), now and later."""
        self._ended = True
        for inbox in self._by_channel.values():
            inbox.queue.put_nowait(None)

    def __len__(self) -> int:
        return len(self._by_channel)
