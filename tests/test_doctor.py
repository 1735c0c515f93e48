"""`coze-bridge doctor` against the simulated Discord: each misconfiguration gets its FAIL line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge_api.doctor import main, run_doctor
from bridge_api.settings import load_settings
from simdiscord import ReplyPlan, SimulatedDiscord

QUICK = {"quiet_seconds": 0.4, "first_reply_timeout": 3.0, "max_reply_seconds": 10.0}


async def doctor(sim: SimulatedDiscord, *, probe: bool = False, **discord: Any) -> tuple[str, int]:
    settings = load_settings(environ={}, discord=sim.discord_settings() | discord, completion=QUICK)
    lines, code = await run_doctor(settings, probe=probe)
    text = "\n".join(lines)
    secrets = [sim.bot_token, *sim.user_tokens]
    assert not [secret for secret in secrets if secret in text], "a token reached the output"
    return text, code


def line(text: str, start: str) -> str:
    found = [row for row in text.splitlines() if start in row]
    assert found, f"no line with {start!r} in:\n{text}"
    return found[0]


async def test_a_good_setup_passes_every_check(sim: SimulatedDiscord) -> None:
    text, code = await doctor(sim)
    assert code == 0, text
    assert all(row.startswith("ok ") for row in text.splitlines()), text
    assert "message content intent: on" in text
    assert text.count("user token #") == 3


async def test_the_message_content_intent_off(sim: SimulatedDiscord) -> None:
    sim.message_content_intent = False
    text, code = await doctor(sim)
    assert code == 1
    assert line(text, "message content intent").startswith("FAIL")
    assert "Message Content Intent under Bot → Privileged Gateway Intents" in text


async def test_the_listener_outside_the_guild(sim: SimulatedDiscord) -> None:
    sim.leave_guild(sim.listener_id)
    text, code = await doctor(sim)
    assert code == 1
    assert "FAIL  listener in guild" in text
    assert "invite the bot" in text


async def test_a_missing_channel(sim: SimulatedDiscord) -> None:
    text, code = await doctor(sim, channel_id=12345)
    assert code == 1
    assert "FAIL  model coze: channel: channel 12345 not found (404, code 10003)" in text


async def test_a_channel_that_is_not_a_text_channel(sim: SimulatedDiscord) -> None:
    category = sim.add_channel("Chats", type=4)
    text, code = await doctor(sim, channel_id=category)
    assert code == 1
    assert "FAIL  model coze: channel: #Chats is a category, not a text channel" in text


async def test_a_permission_denied_by_a_channel_overwrite(sim: SimulatedDiscord) -> None:
    sim.overwrite(sim.channel_id, sim.guild_id, deny=1 << 34)  # Manage Threads, for @everyone
    text, code = await doctor(sim)
    assert code == 1
    row = line(text, "listener permissions")
    assert row.startswith("FAIL")
    assert "lacks Manage Threads" in row
    assert "overwrite for @everyone" in row


async def test_a_role_allow_beats_the_everyone_deny(sim: SimulatedDiscord) -> None:
    role = sim.add_role("bridge", 0, members=[sim.listener_id])
    sim.overwrite(sim.channel_id, sim.guild_id, deny=1 << 34)
    sim.overwrite(sim.channel_id, role, allow=1 << 34)
    text, code = await doctor(sim)
    assert code == 0, text


async def test_the_coze_bot_outside_the_guild(sim: SimulatedDiscord) -> None:
    sim.leave_guild(sim.coze_bot_id)
    text, code = await doctor(sim)
    assert code == 1
    assert f"FAIL  model coze: Coze bot {sim.coze_bot_id}: not a member of the guild" in text


async def test_a_revoked_user_token_is_named_by_label_and_fingerprint(sim: SimulatedDiscord) -> None:
    from bot.token_pool import fingerprint

    sim.revoke_token(sim.user_tokens[1])
    text, code = await doctor(sim)
    assert code == 1
    assert f"FAIL  user token #2 ({fingerprint(sim.user_tokens[1])}): revoked or wrong: 401" in text


async def test_the_probe_with_a_normal_bot(sim: SimulatedDiscord) -> None:
    text, code = await doctor(sim, probe=True)
    assert code == 0, text
    row = line(text, "model coze: probe")
    assert row.startswith("ok")
    assert "the end buttons came" in row
    assert "user token #1" in row
    threads = [c for c in sim.world.channels.values() if c.is_thread]
    assert len(threads) == 1
    assert threads[0].archived


async def test_the_probe_with_a_bot_that_never_buttons(sim: SimulatedDiscord) -> None:
    sim.script = lambda prompt: ReplyPlan(text="All fine here.", marker=False)
    text, code = await doctor(sim, probe=True)
    assert code == 0, text
    row = line(text, "model coze: probe")
    assert row.startswith("warn")
    assert "auto-suggest is off: replies end after completion.quiet_seconds" in row


async def test_the_probe_with_an_exhausted_token(sim: SimulatedDiscord) -> None:
    sim.exhaust(sim.user_tokens[0])
    text, code = await doctor(sim, probe=True)
    assert code == 1
    assert "daily_limit notice" in line(text, "model coze: probe")


def test_invalid_settings_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('[discord]\nbot_token = "secret-value"\nguild_id = "not a number"\n')
    assert main(["--config", str(config)], environ={}) == 2
    out = capsys.readouterr().out
    assert out.startswith("FAIL  settings: config error: discord.guild_id")
    assert "secret-value" not in out


def _toml(sim: SimulatedDiscord, path: Path) -> Path:
    d = sim.discord_settings()
    path.write_text(
        "[discord]\n"
        f'bot_token = "{d["bot_token"]}"\nguild_id = {d["guild_id"]}\ncoze_bot_id = {d["coze_bot_id"]}\n'
        f'channel_id = {d["channel_id"]}\napi_base = "{d["api_base"]}"\n'
    )
    return path


async def test_show_config_masks_secrets_and_names_sources(
    sim: SimulatedDiscord, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _toml(sim, tmp_path / "bridge.toml")
    env_file = tmp_path / "env"
    env_file.write_text("BRIDGE_API__PING_SECONDS=7\nBRIDGE_API__RATE_LIMIT_PER_MINUTE=9\n")
    environ = {
        "BRIDGE_DISCORD__USER_TOKENS": json.dumps(sim.user_tokens[:1]),
        "BRIDGE_API__RATE_LIMIT_PER_MINUTE": "3",  # the process environment wins over the env file
        "GUILD_ID": "1",  # coze-discord-proxy's own name: the file's guild_id wins over it
    }
    args = ["--config", str(config), "--env-file", str(env_file), "--show-config"]
    assert main(args, environ=environ) == 0
    out = capsys.readouterr().out
    assert f"discord.bot_token = ********  (file {config})" in out
    assert "discord.user_tokens = [********]  (environment BRIDGE_DISCORD__USER_TOKENS)" in out
    assert f"api.ping_seconds = 7.0  (env file {env_file} BRIDGE_API__PING_SECONDS)" in out
    assert "api.rate_limit_per_minute = 3  (environment BRIDGE_API__RATE_LIMIT_PER_MINUTE)" in out
    assert f"discord.guild_id = {sim.guild_id}  (file {config})" in out
    assert "api.unknown_model = 'first'  (coze-discord-proxy compatibility)" in out
    assert "completion.quiet_seconds = 4.0  (default)" in out
    assert sim.bot_token not in out
    assert sim.user_tokens[0] not in out


async def test_main_runs_in_its_own_loop(sim: SimulatedDiscord, tmp_path: Path) -> None:
    config = _toml(sim, tmp_path / "bridge.toml")
    code = await asyncio.to_thread(main, ["--config", str(config)], environ={})
    assert code == 0


ROOT = str(Path(__file__).resolve().parent.parent)


async def test_the_cli_as_a_subprocess(sim: SimulatedDiscord, tmp_path: Path) -> None:
    config = _toml(sim, tmp_path / "bridge.toml")
    sim.message_content_intent = False
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bridge_api", "doctor", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT},
        timeout=30,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAIL  message content intent" in run.stdout
    assert sim.bot_token not in run.stdout
