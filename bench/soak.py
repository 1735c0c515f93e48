"""Soak: many concurrent streams, a third of them faulted, and a gateway drop in the middle.

    python -m bench.soak --streams 200

Every stream must end (finish chunk or in-band error, then [DONE]); every answer must be the
one asked for (no text of one reply inside another); the bridge must be back at rest after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bot.interface import open_discord_backend
from bridge_api import app as bridge_app
from bridge_api.settings import Settings, load_settings
from simdiscord import PromptInfo, ReplyPlan, SimulatedDiscord

# A daily-limit notice would rest the posting token and move to the next one; the soak keeps
# to faults that end one request each.
REFUSAL = "I'm sorry, but I can't assist with that."
BROKEN = "Something wrong occurs, please retry. If the error persists, please contact the support team."
# Kind of fault by stream number modulo 9: a third of the streams get one.
FAULTS = {0: ("refused", "content_filter"), 1: ("silent", "timeout"), 2: ("broken", "upstream_error")}


def expected_answer(nonce: str) -> str:
    return f"Answer for {nonce}: " + " ".join(f"{nonce}-word{i}" for i in range(12))


def soak_script(prompt: PromptInfo) -> ReplyPlan:
    nonce = prompt.content.split()[-1]
    kind = FAULTS.get(int(nonce.removeprefix("s")) % 9, ("ok", ""))[0]
    if kind == "refused":
        return ReplyPlan(text=REFUSAL, chunk_chars=20, step_delay=0.02, marker=False)
    if kind == "broken":
        return ReplyPlan(text=BROKEN, chunk_chars=20, step_delay=0.02, marker=False)
    if kind == "silent":
        return ReplyPlan(text="", silent=True)
    return ReplyPlan(text=expected_answer(nonce), chunk_chars=16, step_delay=0.05, suggestions=["more"])


@dataclass
class SoakResult:
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


async def one_stream(http: aiohttp.ClientSession, url: str, number: int, result: SoakResult) -> None:
    nonce = f"s{number}"
    body = {"model": "coze", "stream": True, "messages": [{"role": "user", "content": f"soak {nonce}"}]}
    text, finish, error, done = "", None, None, False
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        async for line in resp.content:
            if line.startswith(b"data: [DONE]"):
                done = True
            elif line.startswith(b"data: "):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    error = chunk["error"]["code"]
                elif chunk["choices"]:
                    text += chunk["choices"][0]["delta"].get("content") or ""
                    finish = chunk["choices"][0]["finish_reason"] or finish
    kind, code = FAULTS.get(number % 9, ("ok", ""))
    outcome = f"{kind}:{finish or error}"
    result.outcomes[outcome] += 1
    if not done:
        result.problems.append(f"{nonce}: no [DONE]")
    elif kind == "ok" and (finish != "stop" or text != expected_answer(nonce)):
        result.problems.append(f"{nonce}: wrong answer {text[:60]!r} finish={finish} error={error}")
    elif kind == "refused" and (finish != code or text != REFUSAL):
        result.problems.append(
            f"{nonce}: expected a refusal, got {text[:40]!r} finish={finish} error={error}"
        )
    elif kind not in ("ok", "refused") and (error != code or text):
        result.problems.append(f"{nonce}: expected {code}, got error={error} text={text[:40]!r}")


async def run_soak(url: str, sim: SimulatedDiscord, streams: int) -> SoakResult:
    """Drive `streams` concurrent streams through a bridge already serving at `url`."""
    sim.script = soak_script
    result = SoakResult()
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        clients = [asyncio.ensure_future(one_stream(http, url, n, result)) for n in range(streams)]
        # Drop the gateway once answers are streaming; discord.py resumes and replays.
        async with asyncio.timeout(30):
            await sim.wait_for(lambda: sum(m.edited for m in sim.messages) >= streams // 3)
        await sim.drop_gateway(resumable=True)
        await asyncio.gather(*clients)
        async with http.get(f"{url}/metrics") as resp:
            metrics = await resp.text()
    if "coze_bridge_open_streams 0.0" not in metrics:
        result.problems.append("open streams did not return to 0")
    result.seconds = time.perf_counter() - started
    return result


def soak_settings(sim: SimulatedDiscord, storage: Path) -> Settings:
    return load_settings(
        environ={},
        discord=sim.discord_settings(),
        storage={"path": str(storage / "bridge.db")},
        completion={"quiet_seconds": 2.0, "first_reply_timeout": 3.0, "max_reply_seconds": 30.0},
        # The soak is about faults under concurrency: every stream is posted at once, unpaced.
        accounts={"min_gap_seconds": 0.0, "jitter_seconds": 0.0, "max_in_flight": 64},
    )


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """The whole bridge (backend and HTTP app) on a free port; yields its base URL."""
    async with open_discord_backend(settings) as backend:
        async with asyncio.timeout(10):
            await backend.wait_ready()
        app = bridge_app.make_app(settings, 0, backend=backend)
        async with bridge_app.serving(app) as (_, port):
            yield f"http://127.0.0.1:{port}"


async def main_async(streams: int) -> SoakResult:
    with tempfile.TemporaryDirectory() as storage:
        async with SimulatedDiscord() as sim, serving(soak_settings(sim, Path(storage))) as url:
            result = await run_soak(url, sim, streams)
    result.peak_rss_mb = psutil.Process().memory_info().rss / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args()
    result = asyncio.run(main_async(args.streams))
    summary: dict[str, Any] = {
        "streams": args.streams,
        "seconds": round(result.seconds, 2),
        "outcomes": dict(sorted(result.outcomes.items())),
        "problems": result.problems[:10],
        "process_rss_mb": round(result.peak_rss_mb, 1),
    }
    print(json.dumps(summary, indent=2))
    raise SystemExit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
