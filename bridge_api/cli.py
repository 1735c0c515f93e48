"""`coze-bridge`: run the bridge against Discord, or against the built-in simulated Discord."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.interface import StartupError
from bridge_api import logs
from bridge_api.app import make_app, serving
from bridge_api.appkeys import BACKEND, CONFIG
from bridge_api.settings import ConfigError, Settings, load_settings

log = logging.getLogger("coze_bridge")

EXIT_CONFIG = 2
EXIT_STARTUP = 1
# How long start-up waits for the gateway before printing the banner anyway.
READY_WAIT = 30.0
# The demo's simulated accounts are paced like real ones, only quicker: a visitor sees the gaps
# and the queue at work without waiting seconds for each answer. A settings file may set its own.
DEMO_PACING = {"min_gap_seconds": 0.5, "jitter_seconds": 0.5, "max_in_flight": 4}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="coze-bridge", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML settings file (BRIDGE_* variables override it)")
    parser.add_argument(
        "--env-file",
        type=Path,
        help="BRIDGE_* variables, one per line (systemd's EnvironmentFile syntax), read again on SIGHUP",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="serve answers from a built-in simulated Discord (no token needed)",
    )
    parser.add_argument("--host", help="listen address (overrides api.host)")
    parser.add_argument("--port", type=int, help="listen port (overrides api.port)")
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="overrides log.level for this run",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["doctor"]:
        from bridge_api.doctor import main as doctor  # the setup doctor is its own command

        return doctor(argv[1:])
    args = parse_args(argv)
    api: dict[str, Any] = {}
    if args.host is not None:
        api["host"] = args.host
    if args.port is not None:
        api["port"] = args.port
    try:
        return asyncio.run(_run(args.config, args.env_file, api, demo=args.demo, log_level=args.log_level))
    except ConfigError as exc:
        hint = "" if args.config or args.demo else " (give --config FILE, BRIDGE_* variables, or --demo)"
        print(f"coze-bridge: {exc}{hint}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        print(f"coze-bridge: {exc}", file=sys.stderr)
        return EXIT_STARTUP


async def _run(
    config: Path | None, env_file: Path | None, api: dict[str, Any], *, demo: bool, log_level: str | None
) -> int:
    if not demo:
        load = functools.partial(load_settings, config, env_file=env_file, api=api)
        settings = load()
        _configure_logging(settings, log_level)
        await serve(settings, reload=load, log_level=log_level)
        return 0
    from simdiscord import SimulatedDiscord  # the simulation is only loaded for the demo

    # The simulation's ids are new each run: a demo keeps its database in a temporary folder.
    with tempfile.TemporaryDirectory(prefix="coze-bridge-demo-") as storage:
        async with SimulatedDiscord(pace=1.0) as sim:
            load = functools.partial(
                _demo_paced,
                functools.partial(
                    load_settings,
                    config,
                    env_file=env_file,
                    discord=sim.discord_settings(),
                    api=api,
                    storage={"url": f"sqlite:///{storage}/bridge.db"},  # /tmp/...: four slashes
                ),
            )
            settings = load()
            _configure_logging(settings, log_level)
            await serve(settings, demo=True, reload=load, log_level=log_level)
    return 0


def _demo_paced(load: Callable[[], Settings]) -> Settings:
    """The settings `load` gives, with the demo's pacing for what they leave unset."""
    settings = load()
    accounts = settings.accounts
    pacing = {name: value for name, value in DEMO_PACING.items() if name not in accounts.model_fields_set}
    return settings.model_copy(update={"accounts": accounts.model_copy(update=pacing)})


def _configure_logging(settings: Settings, level: str | None) -> None:
    """Logging as `log` says, `--log-level` overriding its level."""
    # Until the settings are loaded only warnings reach stderr (Python's last-resort handler).
    logs.configure(level or settings.log.level, settings.log.format)


async def serve(
    settings: Settings,
    *,
    demo: bool = False,
    reload: Callable[[], Settings] | None = None,
    log_level: str | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; on SIGHUP (or POST /admin/reload), `reload` the settings."""
    app = make_app(settings, settings.api.port, reload=reload)
    app[CONFIG].on_reload.append(functools.partial(_configure_logging, level=log_level))
    async with serving(app, settings.api.host, settings.api.port) as (_, port):
        try:
            async with asyncio.timeout(READY_WAIT):
                await app[BACKEND].wait_ready()
        except TimeoutError:
            log.warning("the Discord gateway is not ready yet; /readyz says 503 until it is")
        _print_banner(settings, port, demo=demo)
        # Everything loaded so far (modules, discord.py, pydantic schemas) lives as long as the
        # process: keep it out of the collector's full passes, which otherwise pause every
        # stream for a fifth of a second at 1000 open streams.
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, _reload, app)
        try:
            await stop.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        log.info("shutting down")


def _reload(app: web.Application) -> None:
    """SIGHUP (`systemctl reload`): read the settings again; keep those in force if they are invalid."""
    with contextlib.suppress(ConfigError):  # logged; the settings in force stay
        app[CONFIG].reload(app[BACKEND])


def _print_banner(settings: Settings, port: int, *, demo: bool) -> None:
    host = settings.api.host if settings.api.host not in ("0.0.0.0", "::") else "127.0.0.1"
    base = f"http://{host}:{port}/v1"
    auth = ' -H "Authorization: Bearer $KEY"' if settings.api.keys else ""
    lines = [
        f"coze-discord-bridge is serving an OpenAI-compatible API at {base}"
        + (" (demo: simulated Discord)" if demo else ""),
        "try:",
        f"  curl -N {base}/chat/completions -H 'Content-Type: application/json'{auth} \\",
        """    -d '{"model": "coze", "stream": true, "messages": [{"role": "user", "content": "Hello!"}]}'""",
    ]
    if demo:
        pacing = settings.accounts
        lines.append(
            f"demo pacing: each simulated account waits {pacing.min_gap_seconds:g} s (plus up to "
            f"{pacing.jitter_seconds:g} s) between posts, with at most {pacing.max_in_flight} prompts in flight"
        )
    print("\n".join(lines), flush=True)
