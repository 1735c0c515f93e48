"""The doctor's `--probe`: one short prompt per model, in a thread of its own, followed by REST.

REST polling (not the gateway) keeps the doctor independent of the listener; the poll is
short and bounded by the completion settings' own timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from bot.config import BackendConfig, ModelSettings
from bot.coze_texts import Trouble, classify
from bot.doctor_checks import Findings
from bot.rest import Credential, DiscordRest, RestError

PROMPT = "Reply with one short sentence: is this channel working?"
POLL_SECONDS = 0.25
ADVICE = {
    Trouble.DAILY_LIMIT: "this user token's daily quota with the bot is used up (it rests until accounts.reset_at)",
    Trouble.CREATOR_LIMIT: "the Coze bot's owner is out of message credits: top them up in Coze",
    Trouble.BUSY: "Coze is overloaded: try again shortly",
    Trouble.UPSTREAM: "Coze failed to answer: try again, or check the bot in Coze",
    Trouble.REFUSAL: "Coze refused the probe prompt",
}


async def probe(config: BackendConfig, rest: DiscordRest, bot: Credential, found: Findings) -> None:
    for route in config.model_routes:
        check = f"model {route.name}: probe"
        if not found.healthy:
            found.add("skip", check, "needs a healthy user token")
        elif route.channel_id not in found.channels:
            found.add("skip", check, "needs the model's channel")
        else:
            credential, _ = found.healthy[0]
            status, detail = await _probe_one(config, rest, bot, credential, route)
            found.add(status, check, f"{credential.label}: {detail}")


async def _probe_one(
    config: BackendConfig, rest: DiscordRest, bot: Credential, user: Credential, route: ModelSettings
) -> tuple[str, str]:
    private = config.discord.private_threads
    try:
        thread = await rest.create_thread(route.channel_id, "coze-bridge doctor", user, private=private)
    except RestError as exc:
        return "FAIL", f"cannot create a thread ({exc.status}, code {exc.code})"
    try:
        if private:
            await rest.add_thread_member(thread, route.coze_bot_id, user)
        mention = str(route.coze_bot_id)
        prompt_id = await rest.post_message(
            thread,
            {"content": f"<@{mention}> {PROMPT}", "allowed_mentions": {"parse": [], "users": [mention]}},
            user,
        )
        return await _follow(config, rest, user, thread, prompt_id, route.coze_bot_id)
    except RestError as exc:
        return "FAIL", f"the prompt could not be posted ({exc.status}, code {exc.code})"
    finally:
        # The listener moderates threads (Manage Threads); a failed archive only leaves one open.
        with contextlib.suppress(RestError):
            await rest.archive_thread(thread, bot)


async def _follow(
    config: BackendConfig, rest: DiscordRest, user: Credential, thread: int, after: int, coze_id: int
) -> tuple[str, str]:
    timing = config.completion
    quiet = timing.quiet_seconds
    start = time.monotonic()
    first: float | None = None
    last_change, seen = start, ""
    replies: list[dict[str, Any]] = []
    while True:
        now = time.monotonic()
        if now - start > timing.max_reply_seconds:
            break
        if first is None and now - start > timing.first_reply_timeout:
            return "FAIL", (
                f"Coze did not answer within completion.first_reply_timeout ({timing.first_reply_timeout:g} s):"
                " is the bot published to Discord, and does it answer mentions?"
            )
        found = await rest.messages_after(thread, after, user)
        replies = [dict(m) for m in found if str(m["author"]["id"]) == str(coze_id)]
        snapshot = "\x00".join(str(m.get("content", "")) for m in replies)
        if replies and first is None:
            first = now - start
        if snapshot != seen:
            seen, last_change = snapshot, now
        if any(m.get("components") for m in replies) or (first is not None and now - last_change >= quiet):
            break
        await asyncio.sleep(min(POLL_SECONDS, quiet / 4))
    text = "\n".join(str(m.get("content", "")) for m in replies)
    answered = f"Coze answered, first reply after {first or 0.0:.1f} s"
    if (trouble := classify(text, asked=PROMPT)) is not None:
        return "FAIL", f"Coze sent its {trouble.value} notice: {ADVICE[trouble]}"
    if any(m.get("components") for m in replies):
        return "ok", f"{answered}; the end buttons came"
    return (
        "warn",
        f"{answered}; no end buttons: auto-suggest is off: replies end after completion.quiet_seconds ({quiet:g} s)",
    )
