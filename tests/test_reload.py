"""SIGHUP (`systemctl reload`): the settings file is read again while the bridge keeps serving."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp

from bridge_api.live import LiveConfig
from bridge_api.settings import load_settings
from tests.test_cli import api_base, run_cli

DISCORD = {"bot_token": "b", "guild_id": 1, "coze_bot_id": 2, "channel_id": 3}


def settings_with(**sections: object) -> LiveConfig:
    return LiveConfig(load_settings(environ={}, discord=DISCORD, **sections))


def test_a_reload_applies_api_keys_and_keeps_what_the_running_parts_were_built_from() -> None:
    live = settings_with(api={"keys": ["sk-old"], "rate_limit_per_minute": 5})
    limiter = live.now.limiter
    loaded = load_settings(
        environ={},
        discord=DISCORD | {"guild_id": 9},
        api={"keys": ["sk-new"], "rate_limit_per_minute": 5, "port": 9999},
        log={"level": "DEBUG"},
        completion={"quiet_seconds": 1.0},
    )
    waiting = live.reload(loaded)
    assert waiting == ["discord", "completion", "api.port"]
    assert live.now.keys == (b"sk-new",)
    assert live.now.settings.log.level == "DEBUG"
    # The Discord side, the reply timing and the socket stay as the bridge started.
    assert live.now.settings.discord.guild_id == 1
    assert live.now.settings.completion.quiet_seconds == 4.0
    assert live.now.settings.api.port == 8080
    assert live.now.limiter is limiter  # the same limit: callers' counts go on


def test_a_new_rate_limit_starts_new_counts() -> None:
    live = settings_with(api={"rate_limit_per_minute": 5})
    limiter = live.now.limiter
    assert live.reload(load_settings(environ={}, discord=DISCORD, api={"rate_limit_per_minute": 1})) == []
    assert live.now.limiter is not limiter
    live.now.limiter.admit("caller")
    assert live.now.limiter.wait("caller") is not None


async def wait_for_line(proc: asyncio.subprocess.Process, text: str) -> str:
    assert proc.stderr is not None
    async with asyncio.timeout(15):
        while line := (await proc.stderr.readline()).decode():
            if text in line:
                return line
    raise AssertionError(f"the bridge exited before logging {text!r}")


async def status_with(http: aiohttp.ClientSession, base: str, key: str) -> int:
    async with http.get(f"{base}/models", headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status


async def test_sighup_rereads_the_file_and_an_invalid_one_changes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[api]\nkeys = ["sk-first-key"]\n')
    proc = await run_cli("--demo", "--port", "0", "--config", str(config))
    try:
        base = await api_base(proc)
        async with aiohttp.ClientSession() as http:
            assert await status_with(http, base, "sk-first-key") == 200
            config.write_text('[api]\nkeys = ["sk-second-key"]\n[completion]\nquiet_seconds = 1.5\n')
            proc.send_signal(signal.SIGHUP)
            await wait_for_line(proc, "settings reloaded")
            waiting = await wait_for_line(proc, "apply at the next start")
            assert waiting.rstrip().endswith(": completion")
            assert await status_with(http, base, "sk-first-key") == 401
            assert await status_with(http, base, "sk-second-key") == 200

            config.write_text('[api]\nkeys = "sk-third-key-as-a-string-not-a-list"\n')
            proc.send_signal(signal.SIGHUP)
            refused = await wait_for_line(proc, "reload refused")
            assert "api.keys" in refused
            assert "sk-third" not in refused
            assert await status_with(http, base, "sk-second-key") == 200
            assert await status_with(http, base, "sk-third-key-as-a-string-not-a-list") == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            await proc.communicate()
    assert proc.returncode == 0
