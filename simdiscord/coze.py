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
    sim:cutoff     a 4000-character answer cut off with an ellipsis; "continue" goes on
    sim:image      an image embed (so does a prompt starting with "draw")
    sim:attachment the image as an attachment instead

Like the real one, it remembers each thread: a prompt sees the earlier prompts of its channel,
and "continue" resumes a cut-off answer. Limits are set per user (`exhaust`) or per Coze bot
(`creator_limit`); their notices come without buttons.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from simdiscord.payloads import attachment_url
from simdiscord.png import solid_png
from simdiscord.world import Account, Message, World

MESSAGE_LIMIT = 2000
DEFAULT_SUGGESTIONS = ("Tell me more", "Can you give an example?", "What should I try next?")


DAILY_LIMIT_TEXT = (
    "You have exceeded the daily limit for sending messages to the bot. Please try again later."
)
CREATOR_LIMIT_TEXT = (
    "The bot's usage is covered by the developer, but due to the developer's message credits "
    "being exhausted, the bot is temporarily unavailable."
)
CUT_AT = 1900
# How many words a continuation repeats from before the cut, as the real Coze tends to.
REPEATED_WORDS = 4


@dataclass(frozen=True, slots=True)
class SeenAttachment:
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True, slots=True)
class PromptInfo:
    message_id: int
    channel_id: int
    author_id: int
    author_is_bot: bool
    content: str  # with the mention of the Coze bot removed
    bot_id: int = 0
    attachments: tuple[SeenAttachment, ...] = ()
    history: tuple[str, ...] = ()  # earlier prompts to this Coze bot in this channel


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
    images: int = 0  # generated images, shown as embeds
    images_as_attachments: bool = False
    # What "continue" in the same thread answers (set when `text` is cut off).
    remainder: str | None = None


Script = Callable[[PromptInfo], ReplyPlan]
Emit = Callable[[str, Message], Awaitable[None]]


def default_script(pace: float = 1.0) -> Script:
    def script(prompt: PromptInfo) -> ReplyPlan:
        asked = " ".join(prompt.content.split())
        shown = asked if len(asked) <= 120 else asked[:117] + "..."
        text = f'You asked: "{shown}"\n\n'
        if prompt.history:
            text += f"(I remember {len(prompt.history)} earlier prompt(s) in this thread.)\n\n"
        if prompt.attachments:
            seen = ", ".join(f"{a.filename} ({a.size} bytes, {a.content_type})" for a in prompt.attachments)
            text += f"I see {len(prompt.attachments)} image(s): {seen}.\n\n"
        text += (
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
        if "sim:cutoff" in asked:
            whole = " ".join(f"Sentence {n} of a very long answer." for n in range(1, 121))
            plan.text, plan.remainder = cut_off(whole)
            plan.chunk_chars = 200
        if "sim:followups" in asked:
            plan.followups = ["Would you like a summary?", "Shall I go deeper?"]
        if "sim:rewrite" in asked:
            plan.text = text + " Read more at https://example.com/coze"
            plan.final_text = text + " Read more at <https://example.com/coze>"
        if "sim:image" in asked or "sim:attachment" in asked or asked.lower().startswith("draw"):
            plan.text = "Here is your picture."
            plan.images = 1
            plan.images_as_attachments = "sim:attachment" in asked
        return plan

    return script


def cut_off(text: str) -> tuple[str, str | None]:
    """What fits one reply (cut between words, with an ellipsis), and what "continue" says."""
    if len(text) <= CUT_AT:
        return text, None
    cut = text.rfind(" ", 0, CUT_AT)
    head, rest = text[:cut], text[cut + 1 :]
    repeated = " ".join(head.split()[-REPEATED_WORDS:])
    return head + "...", f"{repeated} {rest}"


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
        # While set and not yet open, every reply waits for it before it starts (a slow Coze
        # that holds the bridge's tokens in flight); `replying` counts the replies under way.
        self.gate: asyncio.Event | None = None
        self.replying = 0
        self.reply_ended: dict[int, float] = {}  # prompt message id -> when its reply ended
        # (user id, Coze bot id or None for all): daily quota used up.
        self.exhausted: set[tuple[int, int | None]] = set()
        self.creator_limited: set[int] = set()
        self._emit = emit
        self._spawn = spawn
        self._history: dict[tuple[int, int], list[str]] = {}
        self._remainders: dict[tuple[int, int], str] = {}
        self._pngs = 0

    def on_message(self, message: Message) -> None:
        bot = next((b for b in self.world.coze_bots if b in message.mentions), None)
        if bot is None or message.author.id in {b.id for b in self.world.coze_bots}:
            return
        if not self.world.channels[message.channel_id].admits(bot.id):
            return  # a private thread it was never added to: it sees nothing there
        context = (message.channel_id, bot.id)
        prompt = PromptInfo(
            message_id=message.id,
            channel_id=message.channel_id,
            author_id=message.author.id,
            author_is_bot=message.author.bot,
            content=re.sub(rf"<@!?{bot.id}>", "", message.content).strip(),
            bot_id=bot.id,
            attachments=tuple(
                SeenAttachment(a.filename, a.content_type, a.size) for a in message.attachments
            ),
            history=tuple(self._history.get(context, ())),
        )
        # Since early 2024 Coze-published bots ignore prompts written by bot accounts.
        if message.author.bot and self.ignores_bots:
            self.prompts_ignored.append(prompt)
            self.world.changed()
            return
        self.prompts_received.append(prompt)
        self._history.setdefault(context, []).append(prompt.content)
        self.world.changed()
        plan = self._plan(prompt, context)
        if not plan.silent:
            self._spawn(self._reply(prompt, plan, bot))

    def _plan(self, prompt: PromptInfo, context: tuple[int, int]) -> ReplyPlan:
        fast = {"chunk_chars": 40, "step_delay": 0.002, "first_delay": 0.002, "marker": False}
        if (prompt.author_id, None) in self.exhausted or (prompt.author_id, prompt.bot_id) in self.exhausted:
            return ReplyPlan(text=DAILY_LIMIT_TEXT, **fast)  # type: ignore[arg-type]
        if prompt.bot_id in self.creator_limited:
            return ReplyPlan(text=CREATOR_LIMIT_TEXT, **fast)  # type: ignore[arg-type]
        remainder = self._remainders.pop(context, None)
        if remainder is not None and prompt.content.strip().lower() == "continue":
            text, rest = cut_off(remainder)
            plan = ReplyPlan(text=text, chunk_chars=200, step_delay=0.002, first_delay=0.002, remainder=rest)
        else:
            plan = self.script(prompt)
        if plan.remainder is not None:
            self._remainders[context] = plan.remainder
        return plan

    async def _reply(self, prompt: PromptInfo, plan: ReplyPlan, bot: Account) -> None:
        self.replying += 1
        self.world.changed()
        try:
            if self.gate is not None:
                await self.gate.wait()
            await self._stream(prompt, plan, bot)
        finally:
            self.replying -= 1
            # When the reply ended, on the simulation's clock: a prompt's time in flight is known.
            self.reply_ended[prompt.message_id] = self.world.clock()
            self.world.changed()

    async def _stream(self, prompt: PromptInfo, plan: ReplyPlan, bot: Account) -> None:
        await asyncio.sleep(plan.first_delay)
        parts = split_answer(plan.text)
        last_message: Message | None = None
        for index, part in enumerate(parts):
            last_message = await self._stream_part(prompt, plan, part, bot)
            if index < len(parts) - 1:
                await asyncio.sleep(plan.step_delay)
        assert last_message is not None
        if plan.final_text is not None:
            last_message.content = split_answer(plan.final_text)[-1]
            await self._edit(last_message)
        if plan.images:
            self._add_images(last_message, plan)
            await self._edit(last_message)
        if plan.marker:
            last_message.components = [_button_row(plan.suggestions, last_message.id)]
            await self._edit(last_message)
        for text in plan.followups:
            await asyncio.sleep(plan.step_delay)
            await self._create(prompt, text, bot)

    def _add_images(self, message: Message, plan: ReplyPlan) -> None:
        for _ in range(plan.images):
            self._pngs += 1
            colour = (40 * self._pngs % 256, 90, 160)
            item = self.world.add_attachment(f"picture{self._pngs}.png", "image/png", solid_png(8, 8, colour))
            if plan.images_as_attachments:
                message.attachments.append(item)
            else:
                message.embed_images.append(attachment_url(self.world, message.channel_id, item))

    async def _stream_part(self, prompt: PromptInfo, plan: ReplyPlan, part: str, bot: Account) -> Message:
        step = max(1, plan.chunk_chars)
        message = await self._create(prompt, part[:step], bot)
        for end in range(2 * step, len(part) + step, step):
            await asyncio.sleep(plan.step_delay)
            message.content = part[:end]
            await self._edit(message)
        return message

    async def _create(self, prompt: PromptInfo, content: str, bot: Account) -> Message:
        message = Message(
            id=self.world.ids.next(),
            channel_id=prompt.channel_id,
            author=bot,
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
