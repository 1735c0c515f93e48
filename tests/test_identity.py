"""User-token requests dress as Discord's web app in a browser; the listener bot's stay a bot's.

Checked on what the simulated Discord saw: the headers of every API call and the account it
authenticated as.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.http import SERVER_SOFTWARE

from bot.config import DESKTOP_USER_AGENT, AccountSettings, UserTokenSettings
from bot.identity import browser_headers, super_properties, user_credential
from bot.interface import StartupError
from bot.rest import BOT_USER_AGENT, Credential, DiscordRest, RestError
from simdiscord import SimulatedDiscord
from simdiscord.rest import SEEN_KEPT, SeenRequest
from tests.conftest import BridgeFactory
from tests.test_e2e_chat import stream_text

FIREFOX_MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.6; rv:133.0) Gecko/20100101 Firefox/133.0"
BROWSER_HEADERS = ("Origin", "Referer", "X-Super-Properties", "X-Discord-Locale", "X-Discord-Timezone")


def decoded_properties(seen: SeenRequest) -> dict[str, Any]:
    properties: dict[str, Any] = json.loads(base64.b64decode(seen.headers["X-Super-Properties"]))
    return properties


def assert_browser(seen: SeenRequest, user_agent: str) -> None:
    assert seen.headers.getall("User-Agent") == [user_agent]
    assert seen.headers["Origin"] == "https://discord.com"
    assert seen.headers["Referer"] == "https://discord.com/channels/@me"
    assert seen.headers["Accept-Language"].startswith("en-US")
    assert seen.headers["X-Discord-Locale"] == "en-US"
    assert seen.headers["X-Discord-Timezone"]
    assert decoded_properties(seen)["browser_user_agent"] == user_agent


def assert_bot(seen: SeenRequest) -> None:
    assert seen.headers["User-Agent"].startswith("DiscordBot ("), seen.headers["User-Agent"]
    assert not any(name in seen.headers for name in BROWSER_HEADERS), dict(seen.headers)


@pytest.fixture
async def rest(sim: SimulatedDiscord) -> AsyncIterator[DiscordRest]:
    async with aiohttp.ClientSession() as session:
        client = DiscordRest(sim.api_base, session)
        yield client
        await client.aclose()


def entry(token: str, **fields: Any) -> UserTokenSettings:
    return UserTokenSettings.model_validate({"token": token, **fields})


async def test_a_user_token_posts_with_a_browsers_headers(sim: SimulatedDiscord, rest: DiscordRest) -> None:
    token = sim.user_tokens[0]
    credential = user_credential(entry(token), AccountSettings(), "user token #1")
    await rest.post_message(sim.channel_id, {"content": "hello"}, credential)

    (seen,) = sim.requests_by(token)
    assert (seen.method, seen.route) == ("POST", "/channels/{channel_id}/messages")
    assert_browser(seen, DESKTOP_USER_AGENT)
    assert decoded_properties(seen) | {"client_build_number": 0} == super_properties(DESKTOP_USER_AGENT) | {
        "client_build_number": 0
    }
    assert "Authorization" not in seen.headers, "the simulation never keeps a token"


async def test_a_tokens_own_user_agent_is_its_alone(sim: SimulatedDiscord, rest: DiscordRest) -> None:
    accounts = AccountSettings(user_agent=DESKTOP_USER_AGENT)
    own, plain = sim.user_tokens[:2]
    credentials = [
        user_credential(entry(own, user_agent=FIREFOX_MAC), accounts, "own"),
        user_credential(entry(plain), accounts, "plain"),
    ]
    for credential in credentials:
        await rest.user_id(credential)
        await rest.post_message(sim.channel_id, {"content": "hi"}, credential)

    assert len(sim.requests_by(own)) == len(sim.requests_by(plain)) == 2
    for seen in sim.requests_by(own):
        assert_browser(seen, FIREFOX_MAC)
        properties = decoded_properties(seen)
        assert (properties["browser"], properties["browser_version"]) == ("Firefox", "133.0")
        assert (properties["os"], properties["os_version"]) == ("Mac OS X", "14.6")
    for seen in sim.requests_by(plain):
        assert_browser(seen, DESKTOP_USER_AGENT)


async def test_a_bot_credential_is_not_dressed_as_a_browser(sim: SimulatedDiscord, rest: DiscordRest) -> None:
    await rest.gateway_url(Credential(sim.bot_token, is_bot=True, label="listener bot"))
    (seen,) = sim.requests_by(sim.bot_token)
    assert_bot(seen)
    assert seen.headers["User-Agent"] == BOT_USER_AGENT


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (DESKTOP_USER_AGENT, ("Chrome", "142.0.0.0", "Windows", "10")),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.86",
            ("Edge", "131.0.2903.86", "Windows", "10"),
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
            ("Safari", "17.5", "iOS", "17.5"),
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
            ("Firefox", "128.0", "Linux", ""),
        ),
        ("curl/8.5.0", ("Other", "", "Other", "")),
    ],
)
def test_super_properties_describe_the_user_agents_browser(
    user_agent: str, expected: tuple[str, ...]
) -> None:
    properties = super_properties(user_agent)
    assert (
        properties["browser"],
        properties["browser_version"],
        properties["os"],
        properties["os_version"],
    ) == expected
    assert properties["browser_user_agent"] == user_agent
    assert properties["release_channel"] == "stable"
    encoded = browser_headers(user_agent)["X-Super-Properties"]
    assert json.loads(base64.b64decode(encoded)) == properties


def test_a_credential_never_shows_its_token_or_proxy_secrets() -> None:
    settings = entry("secret-token-value", proxy="socks5://alice:hunter2@127.0.0.1:1080", label="alice")
    credential = user_credential(settings, AccountSettings(), "alice")
    shown = f"{credential!r} {credential.proxy!r} {credential.proxy}"
    for secret in ("secret-token-value", "hunter2", "alice:"):
        assert secret not in shown


def test_a_malformed_token_proxy_is_refused_without_its_credentials() -> None:
    settings = entry("t", proxy="ftp://alice:hunter2@proxy.example:21")
    with pytest.raises(StartupError) as caught:
        user_credential(settings, AccountSettings(), "user token #1")
    assert "proxy.example" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_an_empty_token_proxy_means_direct() -> None:
    credential = user_credential(entry("t", proxy=""), AccountSettings(), "user token #1")
    assert credential.proxy is None


async def test_a_dead_token_proxy_is_a_rest_error_naming_it_masked(
    sim: SimulatedDiscord, rest: DiscordRest
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    token = sim.user_tokens[0]
    credential = user_credential(
        entry(token, proxy=f"socks5://alice:hunter2@127.0.0.1:{port}"), AccountSettings(), "u1"
    )
    with pytest.raises(RestError) as caught:
        await rest.user_id(credential)
    assert caught.value.status is None
    assert f"socks5://***@127.0.0.1:{port}" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert sim.requests_by(token) == []
    # Nothing is kept of a proxy that failed: the direct tokens still work.
    other = user_credential(entry(sim.user_tokens[1]), AccountSettings(), "u2")
    assert await rest.user_id(other) == sim.account(sim.user_tokens[1]).id


async def test_a_proxy_that_dies_later_is_named_masked(sim: SimulatedDiscord) -> None:
    # A proxy that accepted the reachability check, then answers nothing a SOCKS client expects.
    async def hang_up(reader: Any, writer: Any) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, aiohttp.ClientSession() as session:
        rest = DiscordRest(sim.api_base, session)
        credential = user_credential(
            entry(sim.user_tokens[0], proxy=f"socks5://alice:hunter2@127.0.0.1:{port}"),
            AccountSettings(),
            "u1",
        )
        with pytest.raises(RestError) as caught:
            await rest.user_id(credential)
        await rest.aclose()
    assert caught.value.status is None
    assert f"through the proxy socks5://***@127.0.0.1:{port}" in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_the_simulation_keeps_a_bounded_record(sim: SimulatedDiscord, rest: DiscordRest) -> None:
    assert sim.rest.seen.maxlen == SEEN_KEPT
    credential = user_credential(entry(sim.user_tokens[0]), AccountSettings(), "u1")
    await rest.user_id(credential)
    assert len(sim.requests_seen) == 1
    sim.forget_requests()
    assert sim.requests_seen == []


async def test_the_bridge_posts_as_a_browser_and_listens_as_a_bot(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    own, plain = sim.user_tokens[:2]
    bridge = await start_bridge(
        discord={"user_tokens": [{"token": own, "user_agent": FIREFOX_MAC}, plain]},
    )
    # Least busy, then fewest posts today: two prompts in turn go out from both tokens.
    for n in range(2):
        deltas, finish = await stream_text(bridge, f"prompt {n}")
        assert "".join(deltas)
        assert finish == "stop"
    assert len(sim.prompts_by(own)) == len(sim.prompts_by(plain)) == 1

    assert sim.requests_by(own)
    assert sim.requests_by(plain)
    for seen in sim.requests_by(own):
        assert_browser(seen, FIREFOX_MAC)
    for seen in sim.requests_by(plain):
        assert_browser(seen, DESKTOP_USER_AGENT)
    listener = [seen for seen in sim.requests_seen if seen.account_id == sim.listener_id]
    assert listener, "discord.py's own calls are recorded too"
    for seen in listener:
        assert_bot(seen)
    assert all(seen.headers.get("User-Agent") != SERVER_SOFTWARE for seen in sim.requests_seen)
    assert all(seen.headers.getall("User-Agent", []) for seen in sim.requests_seen)
