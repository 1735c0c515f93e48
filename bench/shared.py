"""One bridge on SQLite, one on PostgreSQL, and two sharing PostgreSQL, against the bare relay.

    python -m bench.shared --streams 200,1000 [--rounds 2] [--targets relay,sqlite,postgres,two]

The same run as bench/streams.py (same script, same clients, same rows), with the bridges
started by bench/instances.py as an operator would run them (settings from BRIDGE_* variables,
PostgreSQL from the machine's binaries, a fresh database per round). With two instances the
clients alternate between them; CPU per request adds both processes up, and peak RSS is the
largest one's (each instance's own footprint).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.instances import API_KEY, BridgeInstances
from bench.streams import BARS, Round, SendLog, bench_script, drive, run_round
from simdiscord import SimulatedDiscord
from tests.pg_server import PgServer, _account, _bindir, _server_folder

# As bench/streams.py's bridge: pacing that never throttles, room for every stream at once.
SETTINGS: dict[str, Any] = {
    "completion": {"quiet_seconds": 5},
    "api": {"max_waiting": 4096},
    "accounts": {"max_in_flight": 1_000_000, "min_gap_seconds": 0, "jitter_seconds": 0, "max_queue": 100_000},
    "log": {"level": "WARNING"},
}
TARGETS = ("relay", "sqlite", "postgres", "two")


async def bridge_round(
    target: str, server: PgServer, streams: int, repeats: int, edits: int, step: float, folder: Path
) -> Round:
    result = Round(target=target, streams=streams)
    log = SendLog()
    if target == "sqlite":
        url, count = f"sqlite:///{folder / 'bridge.db'}", 1
    else:
        url, count = server.url(await server.create(migrated=False)), 2 if target == "two" else 1
    async with SimulatedDiscord() as sim:
        sim.script = bench_script(edits, step)
        sim.on_send = log.record
        sim.on_marker = log.marker
        async with (
            BridgeInstances(sim, url, folder, count=count, settings=SETTINGS) as bridges,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=120),
                headers={"Authorization": f"Bearer {API_KEY}"},
            ) as http,
        ):
            urls = [bridge.base_url for bridge in bridges]
            procs = [psutil.Process(bridge.pid) for bridge in bridges]
            await drive(http, urls, procs, streams, repeats, log, result)
    return result


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    account = _account()
    rows: list[dict[str, Any]] = []
    with _server_folder(account) as pg_folder, tempfile.TemporaryDirectory(prefix="coze-shared-") as tmp:
        server = PgServer(_bindir(), pg_folder, account=account)
        await asyncio.to_thread(server.start)
        try:
            for streams in (int(n) for n in args.streams.split(",")):
                # Rounds alternate so that a busy moment on the machine does not land on one target.
                for n in range(args.rounds):
                    for target in args.targets.split(","):
                        if target == "relay":
                            result = await run_round("relay", streams, args.repeats, args.edits, args.step)
                        else:
                            folder = Path(tmp) / f"{target}-{streams}-{n}"
                            result = await bridge_round(
                                target, server, streams, args.repeats, args.edits, args.step, folder
                            )
                        row = result.row()
                        rows.append(row)
                        print(json.dumps(row), flush=True)
        finally:
            await asyncio.to_thread(server.stop, "fast")
    return rows


def print_comparison(rows: list[dict[str, Any]]) -> None:
    """Medians over the rounds, each bridge against the relay of the same run."""
    print("\nmedians over the rounds; ratio to the bare relay (bar: latency, marker->finish, CPU <= 1.5x)")
    targets = [t for t in dict.fromkeys(r["target"] for r in rows) if t != "relay"]
    for streams in dict.fromkeys(r["streams"] for r in rows):
        for label, key, _, _ in BARS:

            def median(target: str, key: str = key, streams: int = streams) -> float:
                return statistics.median(
                    r[key] for r in rows if r["target"] == target and r["streams"] == streams
                )

            relay = median("relay")
            cells = "  ".join(
                f"{t}={median(t):.2f}"
                + (f" (x{median(t) / relay:.2f})" if relay and key != "peak_rss_mb" else "")
                for t in targets
            )
            print(f"  streams={streams:<5} {label:<19} relay={relay:.2f}  {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="200,1000")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--edits", type=int, default=12)
    parser.add_argument("--step", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    if "relay" in args.targets.split(","):
        print_comparison(rows)


if __name__ == "__main__":
    main()
