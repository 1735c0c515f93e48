"""The scripted Coze bot: answers @mentions from user accounts by creating and editing a reply.

It behaves as the real one does in Discord: an inline reply to the prompt, streamed by edits
carrying the full text so far, a row of follow-up suggestion buttons on the last edit, and
answers over 2000 characters continued in further messages. A script picks each reply's plan.

The default script answers from the prompt, and these words in a prompt pick awkward cases:
    sim:nomarker   no buttons at the end (the bridge must end on the quiet period)
    sim:silent     no answer at all
    sim:long       an answer over 2000 characters, in several messages
    sim:followups  two follow-up messages after the buttons
    sim:rewrite    the last edit rewrites earlier text (a link gets formatted)
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from simdiscord.world import Message, World

MESSAGE_LIMIT = 2000
DEFAULT_SUGGESTIONS = ("Tell me more", "Can you give an example?", "What should I try next?")


@dataclass(frozen=True, slots=True)
class PromptInfo:
    message_id: int
    channel_id: int
    author_id: int
    author_is_bot: bool
    content: str  # with the mention of the Coze bot removed


@dataclass
class ReplyPlan:
    text: str
    chunk_chars: int = 24
    step_delay: float = 0.01
    first_delay: float = 0.01
    suggestions: list[str] = field(default_factory=lambda: list(DEFAULT_SUGGESTIONS))
    marker: bool = True
    followups: list[str] = field(default_factory=list)
    silent: bool = False
    # What the last edit shows instead of `text` (an edit that rewrites earlier text).
    final_text: str | None = None


Script = Callable[[PromptInfo], ReplyPlan]
Emit = Callable[[str, Message], Awaitable[None]]


def default_script(pace: float = 1.0) -> Script:
    def script(prompt: PromptInfo) -> ReplyPlan:
        asked = " ".join(prompt.content.split())
        shown = asked if len(asked) <= 120 else asked[:117] + "..."
        text = (
            f'You asked: "{shown}"\n\n'
            "This answer comes from the simulated Coze bot. Like the real one in Discord, it "
            "replies to your prompt and streams by editing that reply with the full text so far; "
            "when it is done it adds a row of buttons with follow-up suggestions."
        )
        plan = ReplyPlan(text=text, chunk_chars=12, step_delay=0.08 * pace, first_delay=0.3 * pace)
        if "sim:nomarker" in asked:
            plan.marker = False
        if "sim:silent" in asked:
            plan.silent = True
        if "sim:long" in asked:
            plan.text = "\n".join(f"{n}. " + "A long answer keeps going. " * 6 for n in range(1, 41))
            plan.chunk_chars = 180
        if "sim:followups" in asked:
            plan.followups = ["Would you like a summary?", "Shall I go deeper?"]
        if "sim:rewrite" in asked:
            plan.text = text + " Read more at https://example.com/coze"
            plan.final_text = text + " Read more at <https://example.com/coze>"
        return plan

    return script


def split_answer(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Cut an answer into messages on line breaks (the break itself is dropped, as Discord does)."""
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit + 1)
        cut = cut if cut > 0 else limit
        parts.append(text[:cut])
        text = text[cut + 1 :] if text[cut : cut + 1] == "\n" else text[cut:]
    parts.append(text)
    return parts


class CozeBot:
    def __init__(self, world: World, emit: Emit, spawn: Callable[[Awaitable[None]], object]) -> None:
        self.world = world
        self.script: Script = default_script()
        self.ignores_bots = True
        self.prompts_received: list[PromptInfo] = []
        self.prompts_ignored: list[PromptInfo] = []
        self._emit = emit
        self._spawn = spawn
        self._mention = re.compile(rf"<@!?{world.coze.id}>")

    def on_message(self, message: Message) -> None:
        coze = self.world.coze
        if message.author.id == coze.id or coze not in message.mentions:
            return
        prompt = PromptInfo(
            message_id=message.id,
            channel_id=message.channel_id,
            author_id=message.author.id,
            author_is_bot=message.author.bot,
            content=self._mention.sub("", message.content).strip(),
        )
        # Since early 2024 Coze-published bots ignore prompts written by bot accounts.
        if message.author.bot and self.ignores_bots:
            self.prompts_ignored.append(prompt)
            self.world.changed()
            return
        self.prompts_received.append(prompt)
        self.world.changed()
        plan = self.script(prompt)
        if not plan.silent:
            self._spawn(self._reply(prompt, plan))

    async def _reply(self, prompt: PromptInfo, plan: ReplyPlan) -> None:
        await asyncio.sleep(plan.first_delay)
        parts = split_answer(plan.text)
        last_message: Message | None = None
        for index, part in enumerate(parts):
            last_message = await self._stream_part(prompt, plan, part)
            if index < len(parts) - 1:
                await asyncio.sleep(plan.step_delay)
        assert last_message is not None
        if plan.final_text is not None:
            last_message.content = split_answer(plan.final_text)[-1]
            await self._edit(last_message)
        if plan.marker:
            last_message.components = [_button_row(plan.suggestions, last_message.id)]
            await self._edit(last_message)
        for text in plan.followups:
            await asyncio.sleep(plan.step_delay)
            await self._create(prompt, text)

    async def _stream_part(self, prompt: PromptInfo, plan: ReplyPlan, part: str) -> Message:
        step = max(1, plan.chunk_chars)
        message = await self._create(prompt, part[:step])
        for end in range(2 * step, len(part) + step, step):
            await asyncio.sleep(plan.step_delay)
            message.content = part[:end]
            await self._edit(message)
        return message

    async def _create(self, prompt: PromptInfo, content: str) -> Message:
        message = Message(
            id=self.world.ids.next(),
            channel_id=prompt.channel_id,
            author=self.world.coze,
            content=content,
            reference_id=prompt.message_id,
        )
        self.world.add_message(message)
        await self._emit("MESSAGE_CREATE", message)
        return message

    async def _edit(self, message: Message) -> None:
        message.edited = True
        self.world.changed()
        await self._emit("MESSAGE_UPDATE", message)


def _button_row(labels: list[str], message_id: int) -> dict[str, object]:
    buttons = [
        {"type": 2, "style": 2, "label": label[:80], "custom_id": f"suggestion:{message_id}:{n}"}
        for n, label in enumerate(labels[:5])
    ]
    return {"type": 1, "components": buttons}
