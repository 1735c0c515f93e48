"""`coze-bridge` as a user runs it: the demo answers curl-like requests; bad configs exit 2."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

SECRET = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GsEcRt.super-secret-token-value"


async def run_cli(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge_api",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def api_base(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, "the demo exited before printing its URL"
            if match := re.search(r"(http://[\d.]+:\d+/v1)", line):
                return match.group(1)


async def test_demo_serves_stream_and_plain_requests() -> None:
    proc = await run_cli("--demo", "--port", "0")
    try:
        base = await api_base(proc)
        body = {"model": "coze", "messages": [{"role": "user", "content": "Hello demo"}]}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.post(f"{base}/chat/completions", json=body | {"stream": True}) as resp:
                assert resp.status == 200
                raw = (await resp.read()).decode()
            async with http.post(f"{base}/chat/completions", json=body) as resp:
                assert resp.status == 200
                plain = await resp.json()
        assert raw.rstrip().endswith("data: [DONE]")
        streamed = "".join(
            json.loads(frame[6:])["choices"][0]["delta"].get("content", "")
            for frame in raw.split("\n\n")
            if frame.startswith("data: {")
        )
        assert streamed
        assert plain["choices"][0]["message"]["content"]
        assert plain["choices"][0]["finish_reason"] == "stop"
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            code = await proc.wait()
    assert code == 0


async def test_bad_config_exits_2_naming_the_key_without_secrets(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[discord]\nbot_token = "{SECRET}"\nguild_id = "not-a-number"\ncoze_bot_id = 1\nchannel_id = 2\n'
        f'user_tokens = ["{SECRET}"]\n'
    )
    proc = await run_cli("--config", str(config))
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1
    assert "discord.guild_id" in lines[0]
    assert SECRET not in (out + err).decode()


async def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    proc = await run_cli("--config", str(tmp_path / "absent.toml"))
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "absent.toml" in err.decode()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_ends_open_streams_in_band_and_exits_0(signum: signal.Signals) -> None:
    proc = await run_cli("--demo", "--port", "0")
    base = await api_base(proc)
    body = {"model": "coze", "stream": True, "messages": [{"role": "user", "content": "sim:long please"}]}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.post(f"{base}/chat/completions", json=body) as resp,
    ):
        frames: list[str] = []
        async for line in resp.content:
            text = line.decode().strip()
            if not text.startswith("data: "):
                continue
            frames.append(text)
            if '"content":"' in text and '"role"' not in text and len(frames) == 2:
                proc.send_signal(signum)  # mid-answer
    assert frames[-1] == "data: [DONE]"
    assert json.loads(frames[-2][6:])["error"]["code"] == "server_shutdown"
    async with asyncio.timeout(10):
        assert await proc.wait() == 0


async def test_the_demo_paces_its_accounts_and_says_so(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[accounts]\nmin_gap_seconds = 2.0\n")  # the file's own pacing wins
    proc = await run_cli("--demo", "--port", "0", "--config", str(config))
    try:
        base = await api_base(proc)
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            while "demo pacing" not in (line := (await proc.stdout.readline()).decode()):
                assert line, "the banner ended without the demo's pacing"
        assert "waits 2 s (plus up to 0.5 s) between posts, with at most 4 prompts in flight" in line
        async with aiohttp.ClientSession() as http, http.get(f"{base}/status") as resp:
            tokens = (await resp.json())["tokens"]
        assert tokens
        assert {token["max_in_flight"] for token in tokens} == {4}
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            await proc.communicate()
    assert proc.returncode == 0
