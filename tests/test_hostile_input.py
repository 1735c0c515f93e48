"""Hostile callers and a broken host: 4xx in OpenAI's shape, one-line start-up errors, clean logs
(issue 11, "Nothing posted twice, no 500s" and "The defaults are safe")."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import aiohttp
import pytest

from bot.interface import StartupError
from bot.sqlite_store import open_sqlite_store
from bridge_api.settings import ConfigError, load_settings
from tests.conftest import failed_start
from tests.mock_bridge import DISCORD, mock_bridge

USER = [{"role": "user", "content": "hi"}]


async def test_deeply_nested_json_is_400_invalid_json(caplog: pytest.LogCaptureFixture) -> None:
    body = b'{"model": "coze", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    async with mock_bridge() as (base, _), aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/chat/completions", data=body) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "invalid_json"
        async with http.post(f"{base}/v1/chat/completions", json={"model": "coze", "messages": USER}) as resp:
            assert resp.status == 200, "and the server keeps serving"
    assert not [record for record in caplog.records if record.exc_info], "no traceback is logged"


async def test_a_non_utf8_authorization_header_is_401(caplog: pytest.LogCaptureFixture) -> None:
    async with mock_bridge(keys=["right-key"]) as (base, _):
        reader, writer = await asyncio.open_connection(*base.removeprefix("http://").split(":"))
        body = b'{"model": "coze", "messages": [{"role": "user", "content": "hi"}]}'
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer \xff\xfe-not-utf8\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + body
        )
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()
        writer.close()
        await writer.wait_closed()
    assert status_line.split()[1] == b"401"
    assert not [record for record in caplog.records if record.exc_info], "no traceback is logged"


async def test_control_characters_in_logged_fields_are_escaped(caplog: pytest.LogCaptureFixture) -> None:
    forged = "coze\n2026-12-01 00:00:00 INFO coze_bridge.access: forged line"
    with caplog.at_level(logging.INFO, logger="coze_bridge.access"):
        async with mock_bridge() as (base, _), aiohttp.ClientSession() as http:
            body = {"model": forged + "x" * 1000, "messages": USER}
            async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
                await resp.read()
    lines = [record.getMessage() for record in caplog.records if record.name == "coze_bridge.access"]
    assert lines
    assert all("\n" not in line for line in lines)
    assert all(len(line) < 600 for line in lines), "a model name is cut to a sane length"


MODEL = {"name": "m", "coze_bot_id": 5, "channel_id": 6}


@pytest.mark.parametrize(
    "sections",
    [{"api": {"keys": ["good", ""]}}, {"models": [MODEL | {"api_keys": ["  "]}]}],
    ids=["api.keys", "a model's api_keys"],
)
def test_an_empty_api_key_is_a_config_error(sections: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, discord=DISCORD, **sections)
    assert "may not be empty" in str(caught.value)


async def test_a_corrupt_database_is_a_startup_error(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    path.write_bytes(b"this is not a database, just some text" * 100)
    with pytest.raises(StartupError, match=str(path.name)):
        async with open_sqlite_store(path):
            pass


async def test_the_cli_says_a_corrupt_database_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    path.write_bytes(b"garbage" * 500)
    printed, lines = await failed_start(tmp_path, f'path = "{path}"')
    assert len(lines) == 1
    assert "Traceback" not in printed


async def test_a_list_setting_that_is_not_json_is_one_line_exit_2() -> None:
    secret = "tok-secret-value-123"
    env = {
        "PATH": "/usr/bin:/bin",
        "BRIDGE_DISCORD__BOT_TOKEN": "x",
        "BRIDGE_DISCORD__GUILD_ID": "1",
        "BRIDGE_DISCORD__COZE_BOT_ID": "2",
        "BRIDGE_DISCORD__CHANNEL_ID": "3",
        "BRIDGE_DISCORD__USER_TOKENS": f"{secret},another",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge_api", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert len(err.decode().strip().splitlines()) == 1
    assert "JSON" in err.decode()
    assert secret not in (out + err).decode()
