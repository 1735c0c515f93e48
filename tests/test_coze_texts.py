"""Coze's trouble texts: recognised loosely, held back while ambiguous."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.coze_texts import KNOWN_TEXTS, Holdback, Trouble, classify, seconds_until_reset


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
        assert holdback.release(text[:end]) == ""


def test_an_answer_is_released_as_soon_as_it_diverges() -> None:
    holdback = Holdback()
    assert holdback.release("Hi") == ""
    assert holdback.release("Hi there, friend") == "Hi there, friend"
    assert holdback.release("Hi there, friend!") == "!"
    assert holdback.flush("Hi there, friend! Bye") == " Bye"


@given(st.text(max_size=60))
def test_released_text_is_always_a_prefix_of_the_reply(text: str) -> None:
    holdback = Holdback()
    out = "".join(holdback.release(text[:end]) for end in range(len(text) + 1)) + holdback.flush(text)
    assert out == text


def test_reset_is_next_utc_midnight() -> None:
    assert seconds_until_reset(datetime(2026, 1, 1, 23, 0, tzinfo=UTC)) == 3600
