"""Coze's trouble texts: recognised loosely, held back while ambiguous."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.coze_texts import KNOWN_TEXTS, Holdback, Trouble, classify


@pytest.mark.parametrize(
    ("reply", "trouble"),
    [
        (
            "You have exceeded the daily limit for sending messages to the bot. Please try again later.",
            Trouble.DAILY_LIMIT,
        ),
        (
            "hi there!  you\u2019ve used up your credits for today. To continue enjoying...",
            Trouble.DAILY_LIMIT,
        ),
        (
            "Hi there! You've used up your free chat credits. To continue enjoying our service, please consider "
            "upgrading to our premium plan [Upgrade to Coze Premium to chat]",
            Trouble.DAILY_LIMIT,
        ),
        (
            "The bot's usage is covered by the developer, but due to the developer's message credits being "
            "exhausted, the bot is temporarily unavailable.",
            Trouble.CREATOR_LIMIT,
        ),
        ("There are too many users now. Please try again a bit later.", Trouble.BUSY),
        ("THERE ARE TOO MANY USERS NOW", Trouble.BUSY),
        (
            "Something wrong occurs, please retry. If the error persists, please contact the support team.",
            Trouble.UPSTREAM,
        ),
        (
            "Some error occurred. Please try again or contact the support team in our communities.",
            Trouble.UPSTREAM,
        ),
        (
            "We've detected unusual traffic from your network, so Coze is temporarily unavailable.",
            Trouble.UPSTREAM,
        ),
        ("I'm sorry, but I can't assist with that.", Trouble.REFUSAL),
        ("I'm sorry, but I can't assist with that.\nMaybe ask something else?", Trouble.REFUSAL),
        ("Paris is the capital of France.", None),
        ("There are too many users of Python to count.", None),
        ("", None),
    ],
)
def test_classify(reply: str, trouble: Trouble | None) -> None:
    assert classify(reply) is trouble


def test_a_trouble_text_is_held_back_while_it_streams() -> None:
    holdback = Holdback()
    text = KNOWN_TEXTS[0][0] + ". Please try again later."
    for end in range(1, len(text) + 1):
        assert holdback.visible(text[:end]) == ""


def test_an_answer_shows_as_soon_as_it_diverges() -> None:
    holdback = Holdback()
    assert holdback.visible("Hi") == ""
    assert holdback.visible("Hi there, friend") == "Hi there, friend"
    # Once it has diverged it stays visible, even if later text looks like a notice again.
    assert holdback.visible("Hi there") == "Hi there"


@given(st.text(max_size=60))
def test_visible_text_is_the_reply_or_nothing(text: str) -> None:
    holdback = Holdback()
    for end in range(len(text) + 1):
        assert holdback.visible(text[:end]) in ("", text[:end])
