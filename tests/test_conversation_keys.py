"""Conversation keys: which histories count as the same, and which turns are new."""

from __future__ import annotations

from bot.conversations import history_key, named_key, new_turns
from bot.interface import ChatTurn


def test_history_keys_ignore_whitespace_and_name_roles_alike() -> None:
    turns = [ChatTurn("system", "Be brief."), ChatTurn("user", "Hi")]
    same = [ChatTurn("developer", "Be brief.\n"), ChatTurn("user", "  Hi")]
    assert history_key("coze", turns) == history_key("coze", same)
    assert history_key("coze", turns) != history_key("other", turns)
    assert history_key("coze", turns) != history_key("coze", [*turns, ChatTurn("user", "Hi")])
    assert named_key("coze", "x") != named_key("coze", "y")


def test_keys_belong_to_their_caller() -> None:
    turns = [ChatTurn("user", "Hello")]
    assert named_key("coze", "x", caller="sk-a") != named_key("coze", "x", caller="sk-b")
    assert history_key("coze", turns, caller="sk-a") != history_key("coze", turns, caller="sk-b")
    assert history_key("coze", turns, user="alice") != history_key("coze", turns, user="bob")


def test_new_turns_begin_after_the_last_assistant_reply() -> None:
    assert new_turns([ChatTurn("user", "a")]) == 0
    turns = [ChatTurn("user", "a"), ChatTurn("assistant", "b"), ChatTurn("user", "c"), ChatTurn("user", "d")]
    assert new_turns(turns) == 2
