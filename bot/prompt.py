"""Turning an OpenAI conversation into Discord messages for Coze."""

from __future__ import annotations

from collections.abc import Sequence

from bot.interface import ChatTurn

DISCORD_MESSAGE_LIMIT = 2000

ROLE_LABELS = {
    "system": "System",
    "developer": "System",
    "user": "User",
    "assistant": "Assistant",
    "tool": "Tool",
}


def render_prompt(turns: Sequence[ChatTurn]) -> str:
    """One text for Coze: a lone user turn as it is, anything more with its roles labelled."""
    if len(turns) == 1 and turns[0].role == "user":
        return turns[0].content
    blocks = [f"{ROLE_LABELS.get(turn.role, turn.role.title())}: {turn.content}" for turn in turns]
    return "\n\n".join(blocks)


def split_prompt(text: str, mention: str, limit: int = DISCORD_MESSAGE_LIMIT) -> list[str]:
    """Split into messages of at most `limit` characters; the last one mentions the Coze bot.

    Coze answers the message that mentions it, so the mention goes last; splits fall on line
    breaks where possible, then on spaces, and only inside a word when nothing else fits.
    """
    prefix = f"{mention} "
    text = text.strip()
    chunks: list[str] = []
    # The last chunk must leave room for the mention, so every chunk is cut to that size.
    room = limit - len(prefix)
    if room <= 0:
        raise ValueError("limit leaves no room after the mention")
    while len(text) > room:
        cut = _cut_point(text, room)
        head, text = text[:cut].rstrip(), text[cut:].lstrip()
        if head:
            chunks.append(head)
    chunks.append(prefix + text if text else mention)
    return chunks


def _cut_point(text: str, room: int) -> int:
    window = text[: room + 1]
    for separator in ("\n", " "):
        at = window.rfind(separator)
        # A break in the first half would leave many tiny messages; a hard cut is better then.
        if at > room // 2:
            return at
    return room
