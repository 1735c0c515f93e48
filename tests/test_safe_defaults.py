"""The defaults are safe (issue 11): without API keys no web page may drive the bridge, and it
will not listen beyond loopback; a page cannot post to it without a preflight."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest

from bridge_api.settings import ConfigError, load_settings
from tests.mock_bridge import DISCORD, mock_bridge

BODY = b'{"model": "coze", "messages": [{"role": "user", "content": "hi"}]}'
PAGE = "http://evil.example"


@pytest.mark.parametrize(
    ("api", "allowed"),
    [({}, False), ({"allow_no_auth": True}, True), ({"keys": ["sk-1"]}, True)],
    ids=["no keys", "no keys, allow_no_auth", "keys"],
)
async def test_without_keys_no_browser_origin_is_allowed(api: dict[str, object], allowed: bool) -> None:
    preflight = {"Origin": PAGE, "Access-Control-Request-Method": "POST"}
    async with mock_bridge(**api) as (base, _), aiohttp.ClientSession() as http:
        async with http.options(f"{base}/v1/chat/completions", headers=preflight) as resp:
            assert ("Access-Control-Allow-Origin" in resp.headers) is allowed
        async with http.get(
            f"{base}/v1/models", headers={"Origin": PAGE, "Authorization": "Bearer sk-1"}
        ) as resp:
            assert ("Access-Control-Allow-Origin" in resp.headers) is allowed


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_a_page_cannot_post_without_a_preflight(content_type: str) -> None:
    async with mock_bridge(allow_no_auth=True) as (base, backend), aiohttp.ClientSession() as http:
        headers = {"Origin": PAGE, "Content-Type": content_type}
        async with http.post(f"{base}/v1/chat/completions", data=BODY, headers=headers) as resp:
            assert resp.status == 415
            assert (await resp.json())["error"]["code"] == "unsupported_media_type"
        assert backend.requests == [], "nothing reached Coze"
        # Without an Origin (curl, the SDK, gateways) the content type is not held against anyone.
        async with http.post(
            f"{base}/v1/chat/completions", data=BODY, headers={"Content-Type": content_type}
        ) as resp:
            assert resp.status == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com"])
def test_listening_beyond_loopback_needs_keys(host: str) -> None:
    with pytest.raises(ConfigError, match=r"api\.keys"):
        load_settings(environ={}, discord=DISCORD, api={"host": host})
    load_settings(environ={}, discord=DISCORD, api={"host": host, "keys": ["sk-1"]})
    load_settings(environ={}, discord=DISCORD, api={"host": host, "allow_no_auth": True})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_keys(host: str) -> None:
    load_settings(environ={}, discord=DISCORD, api={"host": host})


async def test_the_cli_refuses_to_listen_openly_without_keys(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[discord]\nbot_token = "t"\nguild_id = 1\ncoze_bot_id = 2\nchannel_id = 3\n[api]\nhost = "0.0.0.0"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge_api", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert len(err.decode().strip().splitlines()) == 1
    assert "allow_no_auth" in err.decode()
