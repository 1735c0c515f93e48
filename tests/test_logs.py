"""Logs: text or JSON lines, the request id on every line about a request, and never a secret."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.interface import Finished, PromptRequest, ReplyEvent
from bot.mock import MockBackend
from bridge_api import logs
from bridge_api.app import make_app, serving
from bridge_api.middleware import key_fingerprint
from bridge_api.settings import load_settings
from simdiscord import SimulatedDiscord
from tests.conftest import BridgeFactory
from tests.test_cli import api_base, run_cli

# Shaped like the real things, so a leak would look like one.
BOT_TOKEN = "MTA4NzY1NDMyMTA5ODc2NTQzMg.GhIjKl.bot-token-secret-part-0123456789abcdef"
USER_TOKENS = [
    "MTE5OTg4Nzc2NjU1NDQzMzIyMQ.GaBcDe.user-token-one-secret-abcdef0123456789",
    "ODk4NzY1NDMyMTA5ODc2NTQz.YxZaBc.user-token-two-secret-9876543210fedcba",
]
API_KEY = "sk-live-4f9c2e7a1b8d3f6e0a5c9b2d7e1f4a8c"
OTHER_KEY = "sk-wrong-0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d"
ADMIN_KEY = "sk-admin-9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"
ACCESS_FIELDS = {
    "method",
    "path",
    "status",
    "model",
    "key",
    "first_token_seconds",
    "duration_seconds",
    "prompt_tokens",
    "completion_tokens",
}
backend_log = logging.getLogger("bot.test_logs")


@pytest.fixture
def caplog_with_ids(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at DEBUG whose records carry request ids, as the configured handler's do."""
    request_ids = logs.RequestIdFilter()
    caplog.handler.addFilter(request_ids)
    caplog.set_level(logging.DEBUG)
    yield caplog
    caplog.handler.removeFilter(request_ids)


async def answer_and_log(request: PromptRequest) -> AsyncIterator[ReplyEvent]:
    backend_log.info("answering")

    async def aside() -> None:
        backend_log.info("a task started for the request")

    await asyncio.create_task(aside())
    yield Finished("stop", "fine")


def all_output(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the records would print, as text and as JSON lines."""
    json_format = logs.formatter("json")
    return caplog.text + "\n".join(json_format.format(record) for record in caplog.records)


def assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text
        # The part after the first dot is as secret as the whole token.
        assert secret.split(".", 1)[-1] not in text


async def test_lines_logged_during_a_request_carry_its_id(caplog_with_ids: pytest.LogCaptureFixture) -> None:
    settings = load_settings(
        environ={}, discord={"bot_token": "b", "guild_id": 1, "coze_bot_id": 2, "channel_id": 3}
    )
    async with serving(make_app(settings, 0, backend=MockBackend(answer_and_log))) as (_, port):
        body = {"model": "coze", "messages": [{"role": "user", "content": "hi"}]}
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers={"X-Request-Id": "trace-1"}
            ) as resp,
        ):
            assert resp.status == 200
        backend_log.info("between requests")
    ids = {record.getMessage(): getattr(record, "request_id", None) for record in caplog_with_ids.records}
    assert ids["answering"] == "trace-1"
    assert ids["a task started for the request"] == "trace-1"
    assert ids["between requests"] is None
    (access,) = [r for r in caplog_with_ids.records if r.name == "coze_bridge.access"]
    assert access.request_id == "trace-1"  # type: ignore[attr-defined]
    text = logs.formatter("text").format(access)
    assert "[trace-1] POST /v1/chat/completions 200 model=coze key=- first_token=" in text
    # "hi" and "fine": estimated as the response's usage reports them.
    assert text.endswith(" tokens=1+1")
    assert (access.prompt_tokens, access.completion_tokens) == (1, 1)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {API_KEY}"},
        {"proxy-secret": API_KEY},
        {"Authorization": f"Bearer {OTHER_KEY}"},
        {"Authorization": f"Bearer {API_KEY}\u2028forged line"},
    ],
    ids=["bearer", "proxy-secret", "wrong-key", "hostile-key"],
)
async def test_no_secret_reaches_the_log_at_debug(
    caplog_with_ids: pytest.LogCaptureFixture, headers: dict[str, str]
) -> None:
    discord = {
        "bot_token": BOT_TOKEN,
        "user_tokens": USER_TOKENS,
        "guild_id": 1,
        "coze_bot_id": 2,
        "channel_id": 3,
    }
    settings = load_settings(environ={}, discord=discord, api={"keys": [API_KEY]}, log={"level": "DEBUG"})
    async with serving(make_app(settings, 0, backend=MockBackend(answer_and_log))) as (_, port):
        body = {"model": "coze", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=headers) as resp,
        ):
            await resp.read()
    (access,) = [r for r in caplog_with_ids.records if r.name == "coze_bridge.access"]
    assert access.status in (200, 401)  # type: ignore[attr-defined]
    assert access.key != "-"  # type: ignore[attr-defined]
    assert_no_secret(all_output(caplog_with_ids), [BOT_TOKEN, *USER_TOKENS, API_KEY, OTHER_KEY])


async def test_no_secret_reaches_the_log_of_the_real_bridge(
    caplog_with_ids: pytest.LogCaptureFixture, sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge = await start_bridge(api={"keys": [API_KEY], "admin_keys": [ADMIN_KEY]}, log={"level": "DEBUG"})
    client = bridge.openai(api_key=API_KEY)
    stream = await client.chat.completions.create(
        model="coze", stream=True, messages=[{"role": "user", "content": "hello"}]
    )
    assert "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    await client.close()
    # The admin endpoints log what they did, by label and fingerprint only.
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with bridge.http.get(f"{bridge.base_url}/admin/tokens", headers=admin) as resp:
        token_id = (await resp.json())["tokens"][0]["id"]
    sim.revoke_token(sim.user_tokens[0])
    for method, path, body in [
        ("PATCH", f"/admin/tokens/{token_id}", {"enabled": False}),
        ("POST", f"/admin/tokens/{token_id}/check", None),
    ]:
        async with bridge.http.request(method, bridge.base_url + path, json=body, headers=admin) as resp:
            assert resp.status == 200
    output = all_output(caplog_with_ids)
    assert "discord." in output, "discord.py's own debug lines were captured"
    assert f"admin: user token #1 ({token_id[:8]}) disabled" in output
    assert_no_secret(output, [sim.bot_token, *sim.user_tokens, API_KEY, ADMIN_KEY])


async def run_demo(*args: str, **env: str) -> tuple[str, list[str]]:
    """Run the demo, GET /v1/models once with request id "cli-1", stop it: its URL and stderr lines."""
    proc = await run_cli("--demo", "--port", "0", *args, env=os.environ | env)
    try:
        base = await api_base(proc)
        headers = {"X-Request-Id": "cli-1", "Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession() as http, http.get(f"{base}/models", headers=headers) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return base, err.decode().splitlines()


async def test_json_lines_carry_the_request_id_and_the_access_fields() -> None:
    _, lines = await run_demo(BRIDGE_LOG__FORMAT="json", BRIDGE_API__KEYS=json.dumps([API_KEY]))
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"time", "level", "name", "message"} <= set(records[0])
    (access,) = [r for r in records if r["name"] == "coze_bridge.access"]
    assert access["request_id"] == "cli-1"
    assert set(access) >= ACCESS_FIELDS
    assert (access["method"], access["path"], access["status"]) == ("GET", "/v1/models", 200)
    assert access["key"] == key_fingerprint(API_KEY)
    assert access["first_token_seconds"] is None
    assert access["duration_seconds"] >= 0
    assert_no_secret("\n".join(lines), [API_KEY])


async def test_text_lines_show_the_request_id() -> None:
    _, lines = await run_demo()
    (access,) = [line for line in lines if "coze_bridge.access" in line]
    shown = f"[cli-1] GET /v1/models 200 model=- key={key_fingerprint(API_KEY)} first_token=- duration="
    assert shown in access


@pytest.mark.parametrize(
    ("setting", "flag", "access_logged", "debug_logged"),
    [
        ("WARNING", None, False, False),
        ("DEBUG", None, True, True),
        ("WARNING", "INFO", True, False),
        ("DEBUG", "WARNING", False, False),
    ],
)
async def test_level_comes_from_settings_and_the_flag_overrides_it(
    tmp_path: Path, setting: str, flag: str | None, access_logged: bool, debug_logged: bool
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[log]\nlevel = "{setting}"\nformat = "json"\n')
    args = ["--config", str(config), *(["--log-level", flag] if flag else [])]
    _, lines = await run_demo(*args)
    records: list[dict[str, Any]] = [json.loads(line) for line in lines]
    assert any(r["name"] == "coze_bridge.access" for r in records) == access_logged
    assert any(r["level"] == "DEBUG" for r in records) == debug_logged
