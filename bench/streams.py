"""Concurrent streams through the simulated Discord: the bridge against a bare relay.

    python -m bench.streams --streams 1,50,200 [--target both] [--edits 12] [--step 0.25]

This process runs the simulated Discord and the HTTP clients; the target (the bridge, or the
bare relay of bench/bare_relay.py) runs in a child process, so its CPU time and RSS are its own.
Each Coze reply starts with a nonce; the simulation notes when it sends every edit, and a client
notes when the matching SSE bytes arrive: the difference is the latency added per delta. Likewise
marker -> finish: from the simulation sending Coze's edit that adds the buttons (its end marker)
to the client reading the chunk whose finish_reason is set.

With --profile DIR, py-spy samples the bridge child during each bridge round (raw collapsed stacks,
DIR/bridge-<streams>-<round>.txt); that round's CPU and latency then include the sampling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psutil

from simdiscord import PromptInfo, ReplyPlan, SimulatedDiscord

NONCE_CHARS = 10


@dataclass
class Round:
    target: str
    streams: int
    requests: int = 0
    failures: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    finishes: list[float] = field(default_factory=list)  # marker -> finish, per request
    wall: float = 0.0
    cpu: float = 0.0
    peak_rss: int = 0
    harness_cpu: float = 0.0

    def row(self) -> dict[str, Any]:
        lat = sorted(self.latencies) or [float("nan")]
        fin = sorted(self.finishes) or [float("nan")]
        return {
            "target": self.target,
            "streams": self.streams,
            "requests": self.requests,
            "failures": self.failures,
            "reasons": dict(self.reasons.most_common(5)),
            "deltas": len(self.latencies),
            "p50_ms": round(_pct(lat, 0.5) * 1000, 2),
            "p99_ms": round(_pct(lat, 0.99) * 1000, 2),
            "mean_ms": round(statistics.fmean(lat) * 1000, 2),
            "finishes": len(self.finishes),
            "finish_p50_ms": round(_pct(fin, 0.5) * 1000, 2),
            "finish_p99_ms": round(_pct(fin, 0.99) * 1000, 2),
            "rps": round(self.requests / self.wall, 1) if self.wall else 0.0,
            "cpu_ms_per_request": round(self.cpu / max(self.requests, 1) * 1000, 2),
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
            # Above ~90% the clients and the simulated Discord queue too, and latencies say so.
            "harness_cpu_pct": round(100 * self.harness_cpu / self.wall) if self.wall else 0,
        }


def _pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class SendLog:
    """When the simulation sent each (reply nonce, text length), and each reply's end marker."""

    def __init__(self) -> None:
        self.sent: dict[str, dict[int, float]] = {}
        self.markers: dict[str, float] = {}

    def record(self, content: str) -> None:
        # The first send of a length counts: the marker edit repeats the last text.
        self.sent.setdefault(content.split(" ", 1)[0], {}).setdefault(len(content), time.perf_counter())

    def marker(self, content: str) -> None:
        self.markers.setdefault(content.split(" ", 1)[0], time.perf_counter())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_script(edits: int, step: float) -> Any:
    def script(prompt: PromptInfo) -> ReplyPlan:
        nonce = prompt.content.strip().split()[-1][:NONCE_CHARS]
        body = nonce + " " + " ".join(f"word{i:03d}" for i in range(edits * 2))
        chunk = max(1, len(body) // edits + 1)
        return ReplyPlan(
            text=body, chunk_chars=chunk, step_delay=step, first_delay=step, suggestions=["more"]
        )

    return script


async def start_target(kind: str, sim: SimulatedDiscord, port: int) -> asyncio.subprocess.Process:
    if kind == "relay":
        args = [
            "-m", "bench.bare_relay", "--api-base", sim.api_base, "--bot-token", sim.bot_token,
            "--user-token", sim.user_tokens[0], "--channel-id", str(sim.channel_id),
            "--coze-bot-id", str(sim.coze_bot_id), "--port", str(port),
        ]  # fmt: skip
        env = dict(os.environ)
    else:
        args = ["-m", "bridge_api", "--log-level", "WARNING"]
        discord_env = {
            f"BRIDGE_DISCORD__{key.upper()}": value if isinstance(value, str) else json.dumps(value)
            for key, value in sim.discord_settings().items()
        }
        env = (
            dict(os.environ)
            | discord_env
            | {
                "BRIDGE_API__PORT": str(port),
                "BRIDGE_COMPLETION__QUIET_SECONDS": "5",
                # Every stream starts at the same instant: an operator expecting such bursts
                # lets more than the default 256 wait for a posting slot.
                "BRIDGE_API__MAX_WAITING": "4096",
                # Pacing that never throttles: this measures the relay, not the accounts' manners
                # (bench/pool.py measures those).
                "BRIDGE_ACCOUNTS__MAX_IN_FLIGHT": "1000000",
                "BRIDGE_ACCOUNTS__MIN_GAP_SECONDS": "0",
                "BRIDGE_ACCOUNTS__JITTER_SECONDS": "0",
                "BRIDGE_ACCOUNTS__MAX_QUEUE": "100000",
                # A fresh database per run, as a first start on a VPS would have.
                "BRIDGE_STORAGE__PATH": os.path.join(tempfile.mkdtemp(prefix="coze-bench-"), "bridge.db"),
            }
        )
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, stdout=asyncio.subprocess.DEVNULL
    )


async def wait_serving(http: aiohttp.ClientSession, url: str, path: str) -> None:
    async with asyncio.timeout(20):
        while True:
            try:
                async with http.get(url + path) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)  # polling a child process that has no other signal


async def one_stream(http: aiohttp.ClientSession, url: str, nonce: str, log: SendLog, result: Round) -> None:
    body = {"model": "coze", "stream": True, "messages": [{"role": "user", "content": f"bench {nonce}"}]}
    received = 0
    got_done = False
    reason = "no [DONE]"
    try:
        async with http.post(url + "/v1/chat/completions", json=body) as resp:
            if resp.status != 200:
                reason = f"HTTP {resp.status}: {(await resp.text())[:120]}"
            async for line in resp.content:
                now = time.perf_counter()
                if not line.startswith(b"data: "):
                    continue
                if line.startswith(b"data: [DONE]"):
                    got_done = True
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    reason = f"in-band error: {chunk['error'].get('message', '')[:120]}"
                choices = chunk.get("choices") or [{}]
                if choices[0].get("finish_reason") and (marked := log.markers.get(nonce)) is not None:
                    result.finishes.append(now - marked)
                text = choices[0].get("delta", {}).get("content")
                if text:
                    received += len(text)
                    sent_at = log.sent.get(nonce, {}).get(received)
                    if sent_at is not None:
                        result.latencies.append(now - sent_at)
    except aiohttp.ClientError as exc:
        reason = f"client error: {type(exc).__name__}"
    result.requests += 1
    if not got_done or received == 0:
        result.failures += 1
        result.reasons[reason if not got_done or reason != "no [DONE]" else "no content"] += 1


async def sample_rss(procs: list[psutil.Process], result: Round, stop: asyncio.Event) -> None:
    """The largest RSS of any one target process (each instance's own footprint)."""
    while not stop.is_set():
        result.peak_rss = max(result.peak_rss, *(proc.memory_info().rss for proc in procs))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def drive(
    http: aiohttp.ClientSession,
    urls: list[str],
    procs: list[psutil.Process],
    streams: int,
    repeats: int,
    log: SendLog,
    result: Round,
) -> None:
    """`streams` clients, each sending `repeats` streams one after another, client w to
    urls[w % len(urls)]; the targets' CPU (summed) and peak RSS (the largest) go into `result`."""
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(procs, result, stop))
    cpu0 = sum(sum(ps.cpu_times()[:2]) for ps in procs)
    own0 = time.process_time()
    t0 = time.perf_counter()

    async def worker(w: int) -> None:
        url = urls[w % len(urls)]
        for r in range(repeats):
            await one_stream(http, url, f"n{w:04d}r{r:03d}"[:NONCE_CHARS], log, result)

    # This process plays Discord and every client; its own collector's full passes
    # (a third of a second at 1000 streams) would land in whichever target is measured.
    gc.disable()
    try:
        await asyncio.gather(*(worker(w) for w in range(streams)))
    finally:
        gc.enable()
        stop.set()
        await sampler
    result.wall = time.perf_counter() - t0
    result.cpu = sum(sum(ps.cpu_times()[:2]) for ps in procs) - cpu0
    result.harness_cpu = time.process_time() - own0


async def run_round(
    kind: str, streams: int, repeats: int, edits: int, step: float, profile: str | None = None
) -> Round:
    result = Round(target=kind, streams=streams)
    log = SendLog()
    async with SimulatedDiscord() as sim:
        sim.script = bench_script(edits, step)
        sim.on_send = log.record
        sim.on_marker = log.marker
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = await start_target(kind, sim, port)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=120)
        ) as http:
            try:
                await wait_serving(http, url, "/readyz" if kind == "bridge" else "/")
                if kind == "bridge":
                    while True:
                        async with http.get(url + "/readyz") as resp:
                            if resp.status == 200:
                                break
                        await asyncio.sleep(0.1)  # polling a child process that has no other signal
                ps = psutil.Process(proc.pid)
                spy = None
                if profile is not None:
                    spy = await asyncio.create_subprocess_exec(
                        "py-spy", "record", "--pid", str(proc.pid), "--format", "raw",
                        "--rate", "200", "--nonblocking", "--gil", "-o", profile,
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                    )  # fmt: skip
                    await asyncio.sleep(1)  # py-spy attaches
                await drive(http, [url], [ps], streams, repeats, log, result)
                if spy is not None:
                    spy.send_signal(signal.SIGINT)  # py-spy writes its samples and exits
                    await spy.wait()
            finally:
                proc.terminate()
                await proc.wait()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="1,50,200", help="comma list of concurrent stream counts")
    parser.add_argument("--target", choices=["bridge", "relay", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=4, help="requests per concurrent stream")
    parser.add_argument("--edits", type=int, default=12, help="Coze edits per reply")
    parser.add_argument("--step", type=float, default=0.25, help="seconds between Coze edits")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate the targets this many times; medians are compared"
    )
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the bridge child into DIR (raw stacks)")
    args = parser.parse_args()
    targets = ["relay", "bridge"] if args.target == "both" else [args.target]
    rows = []
    for streams in (int(n) for n in args.streams.split(",")):
        # Rounds alternate so that a busy moment on the machine does not land on one target only.
        for n in range(args.rounds):
            for target in targets:
                profile = None
                if args.profile and target == "bridge":
                    os.makedirs(args.profile, exist_ok=True)
                    profile = os.path.join(args.profile, f"bridge-{streams}-{n + 1}.txt")
                row = asyncio.run(
                    run_round(target, streams, args.repeats, args.edits, args.step, profile)
                ).row()
                rows.append(row)
                print(json.dumps(row) if args.json else _format(row), flush=True)
    if args.target == "both" and not args.json:
        _print_ratios(rows)


def _format(row: dict[str, Any]) -> str:
    return (
        f"{row['target']:>6} streams={row['streams']:<5} requests={row['requests']:<5} "
        f"failures={row['failures']:<3} delta latency p50={row['p50_ms']}ms p99={row['p99_ms']}ms "
        f"marker->finish p50={row['finish_p50_ms']}ms p99={row['finish_p99_ms']}ms "
        f"rps={row['rps']} cpu/request={row['cpu_ms_per_request']}ms peak_rss={row['peak_rss_mb']}MB "
        f"harness_cpu={row['harness_cpu_pct']}%"
        + (f"\n        failures: {row['reasons']}" if row["reasons"] else "")
    )


# (label, row key, the most bridge/relay may be, the most the bridge may reach at BAR_STREAMS or fewer)
BARS = [
    ("p99 per delta", "p99_ms", 1.5, None),
    ("p99 marker->finish", "finish_p99_ms", 1.5, None),
    ("CPU per request", "cpu_ms_per_request", 1.5, None),
    ("peak RSS MB", "peak_rss_mb", None, 100.0),
]
BAR_STREAMS = 1000


def _print_ratios(rows: list[dict[str, Any]]) -> None:
    print(
        "\nbridge / bare relay, medians over the rounds "
        f"(bar: latency, marker->finish, CPU <= 1.5x; bridge peak RSS <= 100 MB at {BAR_STREAMS} streams)"
    )
    for streams in dict.fromkeys(r["streams"] for r in rows):
        for label, key, most_ratio, most_value in BARS:
            bridge, relay = (
                statistics.median(r[key] for r in rows if r["target"] == target and r["streams"] == streams)
                for target in ("bridge", "relay")
            )
            ratio = bridge / relay if relay else float("inf")
            if most_ratio is not None:
                verdict, bar = ratio <= most_ratio, f"<= {most_ratio}x"
            else:
                assert most_value is not None
                verdict, bar = bridge <= most_value, f"<= {most_value:g} MB"
            outcome = ("PASS" if verdict else "FAIL") if streams <= BAR_STREAMS or most_ratio else "-"
            print(
                f"  streams={streams:<5} {label:<19} {bridge:>9.2f} / {relay:>9.2f} = x{ratio:<6.2f}"
                f" bar {bar:<10} {outcome}"
            )


if __name__ == "__main__":
    main()
