"""The token pool under a burst: 4 user tokens with the default pacing, N streams at once.

    python -m bench.pool [--requests 200] [--tokens 4]

The real bridge (in this process) against the simulated Discord. Prints the posts per token,
the largest burst of one token (its most posts inside any min_gap window, and the smallest gap
between two of its posts, on the simulation's clock), and how long the last request waited
before its prompt was posted. accounts.max_queue is raised to the burst's size, so every
request waits its turn instead of getting 503 (the default bound is 100).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bot.interface import open_discord_backend
from bridge_api.app import make_app, serving
from bridge_api.settings import load_settings
from simdiscord import SimulatedDiscord

DEFAULT_GAP = 1.5  # accounts.min_gap_seconds' default


async def one_request(http: aiohttp.ClientSession, url: str, n: int, sent: dict[str, float]) -> int:
    text = f"pool-{n:04d}"
    body = {"model": "coze", "stream": True, "messages": [{"role": "user", "content": text}]}
    sent[text] = time.monotonic()  # the simulation's clock
    async with http.post(url + "/v1/chat/completions", json=body) as resp:
        async for _line in resp.content:
            pass
        return resp.status


def largest_burst(times: list[float], window: float) -> int:
    best, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def run(requests: int, tokens: int) -> dict[str, Any]:
    async with SimulatedDiscord() as sim:
        while len(sim.world.users) < tokens:
            sim.world.users.append(sim.world.add_account(f"prompter{len(sim.world.users) + 1}", bot=False))
        folder = Path(tempfile.mkdtemp(prefix="coze-pool-"))
        discord = sim.discord_settings() | {"user_tokens": sim.user_tokens[:tokens]}
        settings = load_settings(
            environ={},
            discord=discord,
            accounts={"max_queue": requests},
            api={"max_waiting": 4096},
            storage={"path": str(folder / "bridge.db")},
            log={"level": "WARNING"},
        )
        async with contextlib.AsyncExitStack() as stack:
            backend = await stack.enter_async_context(open_discord_backend(settings))
            await backend.wait_ready()
            _, port = await stack.enter_async_context(serving(make_app(settings, 0, backend=backend)))
            http = await stack.enter_async_context(
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
            )
            sent: dict[str, float] = {}
            began = time.monotonic()
            codes = await asyncio.gather(
                *(one_request(http, f"http://127.0.0.1:{port}", n, sent) for n in range(requests))
            )
            wall = time.monotonic() - began
        names = {
            sim.account(token).id: f"token {n}" for n, token in enumerate(sim.user_tokens[:tokens], start=1)
        }
        by_token: dict[str, list[float]] = {name: [] for name in names.values()}
        waits: list[float] = []
        for post in sim.world.prompt_posts:
            by_token[names[post.author_id]].append(post.at)
            asked = sim.world.messages[post.message_id].content.rsplit(" ", 1)[-1]
            if asked in sent:
                waits.append(post.at - sent[asked])
        gaps = [b - a for times in by_token.values() for a, b in itertools.pairwise(times)]
        return {
            "requests": requests,
            "ok": codes.count(200),
            "posts_per_token": {name: len(times) for name, times in by_token.items()},
            "largest_burst_in_min_gap": max(largest_burst(t, DEFAULT_GAP) for t in by_token.values()),
            "smallest_gap_s": round(min(gaps), 3) if gaps else None,
            "last_request_waited_s": round(max(waits), 2),
            "median_wait_s": round(sorted(waits)[len(waits) // 2], 2),
            "wall_s": round(wall, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.requests, args.tokens)), indent=2))


if __name__ == "__main__":
    main()
