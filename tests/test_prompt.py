"""Rendering a conversation for Coze and splitting it into Discord-sized messages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.interface import ChatTurn
from bot.prompt import render_prompt, split_prompt

MENTION = "<@1234567890>"


def test_lone_user_turn_is_sent_as_is() -> None:
    assert render_prompt([ChatTurn("user", "Hi there")]) == "Hi there"


def test_history_is_labelled_with_the_last_user_turn_last() -> None:
    text = render_prompt(
        [
            ChatTurn("system", "Be brief."),
            ChatTurn("user", "Hi"),
            ChatTurn("assistant", "Hello!"),
            ChatTurn("user", "What now?"),
        ]
    )
    assert text == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: What now?"


def test_short_prompt_is_one_message_with_the_mention() -> None:
    assert split_prompt("hello", MENTION) == [f"{MENTION} hello"]


def test_empty_prompt_is_just_the_mention() -> None:
    assert split_prompt("  ", MENTION) == [MENTION]


def test_splits_on_line_breaks_first() -> None:
    lines = [f"line {i} " + "x" * 80 for i in range(60)]
    chunks = split_prompt("\n".join(lines), MENTION)
    assert len(chunks) > 2
    for chunk in chunks[:-1]:
        assert chunk.split("\n")[-1] in lines, "a chunk should end on a whole line"


def test_a_huge_word_is_cut_hard() -> None:
    chunks = split_prompt("y" * 5000, MENTION)
    assert all(len(c) <= 2000 for c in chunks)
    assert "".join(c.removeprefix(f"{MENTION} ") for c in chunks) == "y" * 5000


def test_limit_must_leave_room_for_the_mention() -> None:
    with pytest.raises(ValueError, match="no room"):
        split_prompt("text", MENTION, limit=5)


@given(st.text(alphabet=st.sampled_from("ab \n"), max_size=6000), st.integers(min_value=40, max_value=2000))
@settings(max_examples=200, deadline=None)
def test_chunks_fit_keep_the_text_and_mention_only_the_last(text: str, limit: int) -> None:
    chunks = split_prompt(text, MENTION, limit)
    assert all(len(chunk) <= limit for chunk in chunks)
    assert all(chunk.strip() for chunk in chunks)
    assert all(MENTION not in chunk for chunk in chunks[:-1])
    assert chunks[-1].startswith(MENTION)
    rebuilt = " ".join([*chunks[:-1], chunks[-1].removeprefix(MENTION)])
    assert rebuilt.split() == text.split()
