"""The reply router: which request a Coze message belongs to, whatever order the events come in."""

from __future__ import annotations

from bot.detector import ReplySnapshot
from bot.payloads import CozeMessage
from bot.router import Inbox, ReplyRouter


def coze(channel: int, reference: int | None, message_id: int, text: str) -> CozeMessage:
    return CozeMessage(channel, reference, ReplySnapshot(message_id=message_id, content=text))


def drained(inbox: Inbox) -> list[str]:
    texts = []
    while not inbox.queue.empty():
        item = inbox.queue.get_nowait()
        assert isinstance(item, ReplySnapshot)
        texts.append(item.content)
    return texts


def test_a_reply_that_comes_before_its_prompts_id_is_handed_over_in_order() -> None:
    router = ReplyRouter()
    inbox = router.open(10)
    router.deliver(coze(10, 100, 1, "He"))
    router.deliver(coze(10, 100, 1, "Hello"))
    assert drained(inbox) == []
    router.add_prompt(inbox, 100)
    assert drained(inbox) == ["He", "Hello"]
    router.deliver(coze(10, 100, 1, "Hello!"))
    assert drained(inbox) == ["Hello!"]


def test_replies_to_retired_posts_and_other_threads_are_dropped() -> None:
    router = ReplyRouter()
    inbox = router.open(10)
    router.add_prompt(inbox, 100)
    router.retire_prompts(inbox)  # e.g. the token was spent: the prompt goes out again
    router.deliver(coze(10, 100, 1, "You have used up your daily quota"))
    router.deliver(coze(11, 200, 2, "someone else's answer"))
    router.add_prompt(inbox, 101)
    router.deliver(coze(10, 101, 3, "the real answer"))
    assert drained(inbox) == ["the real answer"]
    assert inbox.early == []
