"""What a conversation costs in Discord: bytes posted per turn, continuing vs re-sending.

    python -m bench.conversation --turns 6

Each turn extends the previous one (system prompt, history, the assistant's reply as
returned). The bridge continues in the conversation's thread and posts only the new user
turn; the "re-sent" column is what posting the whole history would cost instead (what the
Go and Java proxies do), measured by rendering the same history.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import openai

from bench.soak import serving, soak_settings
from bot.interface import ChatTurn
from bot.prompt import render_prompt, split_prompt
from simdiscord import SimulatedDiscord

SYSTEM = "You are a helpful assistant. Answer in plain English, briefly, and cite no sources."
QUESTIONS = [
    "What is the difference between a process and a thread?",
    "And how does asyncio fit in?",
    "Give me an example with aiohttp.",
    "What happens when a task is never awaited?",
    "How would I test that?",
    "Summarise our conversation in one line.",
]


async def measure(turns: int) -> list[tuple[int, int, int, bool]]:
    """(turn, bytes posted, bytes if re-sent, same thread) per turn."""
    rows: list[tuple[int, int, int, bool]] = []
    with tempfile.TemporaryDirectory() as storage:
        async with SimulatedDiscord() as sim, serving(soak_settings(sim, Path(storage))) as url:
            users = {account.id for account in sim.world.users}
            mention = f"<@{sim.coze_bot_id}>"
            messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
            first_thread = None
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused") as client:
                for turn in range(turns):
                    before = len(sim.messages)
                    messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
                    response = await client.chat.completions.create(model="coze", messages=messages)  # type: ignore[arg-type]
                    posted = [m for m in sim.messages[before:] if m.author_id in users]
                    thread = posted[0].channel_id
                    first_thread = first_thread or thread
                    resent = split_prompt(
                        render_prompt([ChatTurn(m["role"], m["content"]) for m in messages]), mention
                    )
                    rows.append(
                        (
                            turn + 1,
                            sum(len(m.content.encode()) for m in posted),
                            sum(len(chunk.encode()) for chunk in resent),
                            thread == first_thread,
                        )
                    )
                    messages.append({"role": "assistant", "content": response.choices[0].message.content})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=6)
    args = parser.parse_args()
    rows = asyncio.run(measure(args.turns))
    print("| turn | bytes posted | bytes if re-sent | same thread |")
    print("| --- | --- | --- | --- |")
    for turn, posted, resent, same in rows:
        print(f"| {turn} | {posted} | {resent} | {'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
