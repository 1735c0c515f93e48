"""SIGHUP (`systemctl reload`): the settings file is read again while the bridge keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.interface import StartupError, open_discord_backend
from bot.mock import MockBackend
from bot.token_pool import fingerprint
from bridge_api.app import make_app, serving
from bridge_api.live import LiveConfig
from bridge_api.middleware import key_fingerprint
from bridge_api.settings import ConfigError, load_settings
from simdiscord import SimulatedDiscord
from tests.conftest import TEST_ACCOUNTS, TEST_COMPLETION
from tests.mock_bridge import answer_fine
from tests.test_cli import api_base, run_cli

DISCORD = {"bot_token": "b", "guild_id": 1, "coze_bot_id": 2, "channel_id": 3}
ADMIN = "sk-admin-reload"


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
    waiting = live.apply(loaded)
    assert waiting == ["discord.guild_id", "completion", "api.port"]
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
    assert live.apply(load_settings(environ={}, discord=DISCORD, api={"rate_limit_per_minute": 1})) == []
    assert live.now.limiter is not limiter
    live.now.limiter.admit("caller")
    assert live.now.limiter.wait("caller") is not None


def test_tokens_models_accounts_and_alerts_change_live() -> None:
    live = LiveConfig(load_settings(environ={}, discord=DISCORD | {"user_tokens": ["token-a", "token-b"]}))
    loaded = load_settings(
        environ={},
        discord=DISCORD | {"user_tokens": [{"token": "token-c", "label": "carol", "max_in_flight": 1}]},
        models=[{"name": "gamma", "coze_bot_id": 7, "channel_id": 8, "api_keys": ["sk-gamma"]}],
        accounts={"min_gap_seconds": 0.25, "max_queue": 3, "reset_at": "04:00 UTC"},
        alerts={"webhook_url": "https://hooks.example/x", "min_interval_minutes": 5},
    )
    assert live.apply(loaded) == []
    settings = live.now.settings
    assert [(t.token.get_secret_value(), t.label) for t in settings.discord.user_tokens] == [
        ("token-c", "carol")
    ]
    assert [model.name for model in settings.model_routes] == ["gamma"]
    assert live.now.keys == (b"sk-gamma",), "a model's own keys are accepted at once"
    assert (settings.accounts.min_gap_seconds, settings.accounts.max_queue) == (0.25, 3)
    assert settings.alerts.min_interval_minutes == 5
    assert settings.discord.bot_token.get_secret_value() == "b"
    # Without [[models]], the one model is the [discord] Coze bot and channel: live as well.
    assert live.apply(load_settings(environ={}, discord=DISCORD | {"coze_bot_id": 9, "channel_id": 10})) == []
    assert [(m.name, m.coze_bot_id, m.channel_id) for m in live.now.settings.model_routes] == [
        ("coze", 9, 10)
    ]


def test_a_reload_puts_the_settings_in_force_before_the_backend_takes_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('[api]\nkeys = ["sk-one"]\n')
    live = LiveConfig(
        load_settings(config, environ={}, discord=DISCORD),
        functools.partial(load_settings, config, environ={}, discord=DISCORD),
    )
    seen: list[tuple[bytes, ...]] = []
    backend = MockBackend(answer_fine)
    backend.reconfigure = lambda settings: seen.append(live.now.keys)  # type: ignore[method-assign]
    hooked: list[object] = []
    live.on_reload.append(hooked.append)

    config.write_text('[api]\nkeys = ["sk-two"]\n[storage]\npath = "elsewhere.db"\n')
    assert live.reload(backend) == ["storage"]
    assert seen == [(b"sk-two",)]
    assert hooked == [live.now.settings]

    config.write_text("[api\n")
    caplog.clear()
    with pytest.raises(ConfigError):
        live.reload(backend)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"reload refused, the settings in force stay: config file {config} is not valid TOML: "
        "Expected ']' at the end of a table declaration (at line 1, column 5)"
    ]
    assert live.now.keys == (b"sk-two",)
    assert len(seen) == 1

    # Settings the backend cannot take (a token's own proxy that is no proxy) are refused too.
    def refuse(settings: object) -> None:
        raise StartupError("discord.user_tokens: user token #1's proxy is not a proxy URL")

    backend.reconfigure = refuse  # type: ignore[method-assign]
    config.write_text('[api]\nkeys = ["sk-three"]\n')
    with pytest.raises(ConfigError, match="proxy is not a proxy URL"):
        live.reload(backend)
    assert live.now.keys == (b"sk-two",)
    assert len(hooked) == 1


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


async def test_sighup_and_the_admin_reload_reread_the_file_and_an_invalid_one_changes_nothing(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    admin = f'admin_keys = ["{ADMIN}"]\n'
    config.write_text('[api]\nkeys = ["sk-first-key"]\n' + admin)
    proc = await run_cli("--demo", "--port", "0", "--config", str(config))
    try:
        base = await api_base(proc)
        origin = base.removesuffix("/v1")
        async with aiohttp.ClientSession() as http:
            assert await status_with(http, base, "sk-first-key") == 200
            config.write_text(
                '[api]\nkeys = ["sk-second-key"]\n' + admin + "[completion]\nquiet_seconds = 1.5\n"
            )
            proc.send_signal(signal.SIGHUP)
            await wait_for_line(proc, "settings reloaded")
            waiting = await wait_for_line(proc, "apply at the next start")
            assert waiting.rstrip().endswith(": completion")
            assert await status_with(http, base, "sk-first-key") == 401
            assert await status_with(http, base, "sk-second-key") == 200

            config.write_text('[api]\nkeys = "sk-third-key-as-a-string-not-a-list"\n' + admin)
            proc.send_signal(signal.SIGHUP)
            refused = await wait_for_line(proc, "reload refused")
            assert "api.keys" in refused
            assert "sk-third" not in refused
            assert await status_with(http, base, "sk-second-key") == 200
            assert await status_with(http, base, "sk-third-key-as-a-string-not-a-list") == 401

            # POST /admin/reload is the same reload, answered instead of only logged.
            headers = {"Authorization": f"Bearer {ADMIN}"}
            async with http.post(f"{origin}/admin/reload", headers=headers) as resp:
                assert resp.status == 400
                assert "api.keys" in (await resp.json())["error"]["message"]
            refused = await wait_for_line(proc, "reload refused")
            config.write_text('[api]\nkeys = ["sk-fourth-key"]\n' + admin + '[log]\nlevel = "WARNING"\n')
            async with http.post(f"{origin}/admin/reload", headers=headers) as resp:
                # completion is still as the bridge started, as this file has it too.
                assert await resp.json() == {"reloaded": True, "restart_needed": []}
            assert await status_with(http, base, "sk-fourth-key") == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            _, err = await proc.communicate()
    assert proc.returncode == 0
    # The new log level took effect with the reload: no access line (INFO) after it.
    rest = err.decode()
    assert "POST /admin/reload 400" in rest
    assert f"key={key_fingerprint('sk-fourth-key')}" not in rest


@dataclass
class ReloadRig:
    config: Path
    base: str
    http: aiohttp.ClientSession

    def write(self, tokens: list[str]) -> None:
        self.config.write_text(
            f"[discord]\nuser_tokens = {json.dumps(tokens)}\n[api]\nadmin_keys = [{ADMIN!r}]\n"
        )

    async def reload(self) -> dict[str, Any]:
        async with self.http.post(
            f"{self.base}/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body

    async def tokens(self) -> dict[str, dict[str, Any]]:
        async with self.http.get(f"{self.base}/v1/status") as resp:
            return {token["id"]: token for token in (await resp.json())["tokens"]}


@contextlib.asynccontextmanager
async def reloadable_bridge(
    sim: SimulatedDiscord, folder: Path, tokens: list[str]
) -> AsyncIterator[ReloadRig]:
    """The real bridge on the simulated Discord, its user tokens read (and re-read) from a file."""
    config = folder / "bridge.toml"
    rig = ReloadRig(config, "", aiohttp.ClientSession())
    rig.write(tokens)
    discord = {name: value for name, value in sim.discord_settings().items() if name != "user_tokens"}
    load = functools.partial(
        load_settings,
        config,
        environ={},
        discord=discord,
        # Long enough that a reply held at the gate does not time out while the test reloads.
        completion=TEST_COMPLETION | {"first_reply_timeout": 20.0},
        accounts=TEST_ACCOUNTS,
        storage={"path": str(folder / "bridge.db")},
    )
    settings = load()
    async with contextlib.AsyncExitStack() as stack:
        backend = await stack.enter_async_context(open_discord_backend(settings))
        async with asyncio.timeout(10):
            await backend.wait_ready()
        _, port = await stack.enter_async_context(
            serving(make_app(settings, 0, backend=backend, reload=load))
        )
        rig.base = f"http://127.0.0.1:{port}"
        await stack.enter_async_context(rig.http)
        yield rig


async def test_a_reload_adds_and_removes_tokens_while_a_stream_is_open(
    sim: SimulatedDiscord, tmp_path: Path
) -> None:
    first, _, added = sim.user_tokens
    gone, new = fingerprint(first), fingerprint(added)
    sim.coze.gate = gate = asyncio.Event()  # Coze holds its replies: the stream stays open
    async with reloadable_bridge(sim, tmp_path, [first]) as rig:
        url = f"{rig.base}/v1/chat/completions"
        body = {"model": "coze", "messages": [{"role": "user", "content": "the open stream"}]}
        async with rig.http.post(url, json=body | {"stream": True}) as stream:
            assert stream.status == 200
            async with asyncio.timeout(10):
                await sim.wait_for(lambda: len(sim.prompts_by(first)) == 1)
            rig.write([added])
            assert await rig.reload() == {"reloaded": True, "restart_needed": []}
            tokens = await rig.tokens()
            assert (tokens[gone]["state"], tokens[gone]["in_flight"]) == ("retiring", 1)
            assert tokens[new]["state"] == "healthy"

            plain = asyncio.ensure_future(
                rig.http.post(url, json=body | {"messages": [{"role": "user", "content": "after"}]})
            )
            async with asyncio.timeout(10):
                await sim.wait_for(lambda: len(sim.prompts_by(added)) == 1)
            gate.set()
            async with asyncio.timeout(10):
                raw = (await stream.read()).decode()
        assert '"finish_reason":"stop"' in raw
        assert raw.endswith("data: [DONE]\n\n")
        assert "the open stream" in "".join(
            json.loads(frame[6:])["choices"][0]["delta"].get("content", "")
            for frame in raw.split("\n\n")
            if frame.startswith('data: {"id"')
        )
        async with asyncio.timeout(10):
            async with await plain as resp:
                assert resp.status == 200
                assert "after" in (await resp.json())["choices"][0]["message"]["content"]
        # The retiring token left once its prompt was answered, and takes no new ones.
        assert list(await rig.tokens()) == [new]
        async with rig.http.post(url, json=body) as resp:
            assert resp.status == 200
        assert (len(sim.prompts_by(first)), len(sim.prompts_by(added))) == (1, 2)
