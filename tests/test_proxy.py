"""discord.proxy, images.proxy and discord.gateway_url, against a real proxy server (pproxy) on loopback.

pproxy -v prints a line per tunnel it opens ("socks5 127.0.0.1:40000 -> 127.0.0.1:8080"): those
lines are the count of connections that went through it, and where they went.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import psutil
import pytest
from yarl import URL

from bot.config import AccountSettings, UserTokenSettings
from bot.identity import user_credential
from bot.interface import StartupError
from bot.proxy import masked, parse_proxy
from bot.rest import DiscordRest
from bridge_api.app import _image_proxy
from bridge_api.doctor import run_doctor
from bridge_api.outbound import FetchFailed, Outbound, is_refused
from simdiscord import SimulatedDiscord
from simdiscord.payloads import attachment_url
from simdiscord.png import solid_png
from tests.conftest import BridgeFactory, sim_settings
from tests.test_e2e_chat import stream_text

USER, PASSWORD = "alice", "hunter2"
TUNNEL = re.compile(r"^\w+ \S+ -> (\S+)$")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Pproxy:
    """A pproxy process: its port, and the destination of every tunnel it opened so far."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.tunnels: list[str] = []
        self._changed = asyncio.Condition()

    async def follow(self, serving: asyncio.Future[None]) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode().strip()
            if line.startswith("Serving on") and not serving.done():
                serving.set_result(None)
            elif found := TUNNEL.match(line):
                async with self._changed:
                    self.tunnels.append(found[1])
                    self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[list[str]], bool]) -> None:
        async with asyncio.timeout(10), self._changed:
            await self._changed.wait_for(lambda: predicate(self.tunnels))


@pytest.fixture
async def start_proxy() -> AsyncIterator[Callable[[str], asyncio.Future[Pproxy]]]:
    """Start `python -m pproxy -l <listen>` (PORT in it becomes a free port) and wait until it serves."""
    running: list[tuple[Pproxy, asyncio.Task[None]]] = []

    async def start(listen: str) -> Pproxy:
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-u",
            "-m",
            "pproxy",
            "-l",
            listen.replace("PORT", str(port)),
            "-v",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        proxy = Pproxy(process, port)
        serving: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        running.append((proxy, asyncio.create_task(proxy.follow(serving))))
        async with asyncio.timeout(15):
            await serving
        return proxy

    yield lambda listen: asyncio.ensure_future(start(listen))
    for proxy, follower in running:
        if proxy.process.returncode is None:
            proxy.process.terminate()
        await proxy.process.wait()
        await follower  # ends at the pipe's end of file


def direct_connections_to(port: int) -> list[str]:
    """This process's client sockets connected straight to `port` (not through a proxy)."""
    return [str(c.laddr) for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port]


@pytest.mark.parametrize("scheme", ["http", "socks5"])
async def test_discord_traffic_goes_through_the_proxy(
    scheme: str,
    start_proxy: Callable[[str], asyncio.Future[Pproxy]],
    sim: SimulatedDiscord,
    start_bridge: BridgeFactory,
) -> None:
    proxy = await start_proxy(f"{scheme}://127.0.0.1:PORT#{USER}:{PASSWORD}")
    discord_at = f"{URL(sim.api_base).host}:{URL(sim.api_base).port}"
    bridge = await start_bridge(discord={"proxy": f"{scheme}://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}"})
    deltas, finish = await stream_text(bridge, "hello through the proxy")
    assert "".join(deltas)
    assert finish == "stop"
    assert sim.prompts_received[0].content == "hello through the proxy"
    # The gateway's websocket is open and REST connections are kept alive: none of them is direct.
    assert direct_connections_to(URL(sim.api_base).port or 0) == []
    # discord.py's session (login, then the websocket on the kept-alive connection) and the
    # bridge's own REST client's: at least two tunnels, all to the simulated Discord.
    assert len(proxy.tunnels) >= 2
    assert set(proxy.tunnels) == {discord_at}
    # The gateway reconnects through the proxy too.
    before = len(proxy.tunnels)
    await sim.drop_gateway(resumable=True)
    await proxy.wait_for(lambda tunnels: len(tunnels) > before)
    # The new tunnel comes after discord.py's "disconnect": ready again means resumed.
    async with asyncio.timeout(10):
        await bridge.backend.wait_ready()
    assert sim.gateway.resumes == 1
    deltas, finish = await stream_text(bridge, "and again")
    assert "".join(deltas)
    assert finish == "stop"
    assert direct_connections_to(URL(sim.api_base).port or 0) == []


async def test_a_dead_proxy_is_a_startup_error_without_its_credentials(start_bridge: BridgeFactory) -> None:
    port = free_port()  # closed again: nothing listens there
    with pytest.raises(StartupError) as caught:
        await start_bridge(discord={"proxy": f"socks5://{USER}:{PASSWORD}@127.0.0.1:{port}"})
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "\n" not in message
    assert USER not in message
    assert PASSWORD not in message


async def test_a_malformed_proxy_is_a_startup_error_without_its_credentials(
    start_bridge: BridgeFactory,
) -> None:
    with pytest.raises(StartupError) as caught:
        await start_bridge(discord={"proxy": f"ftp://{USER}:{PASSWORD}@proxy.example:21"})
    assert PASSWORD not in str(caught.value)
    assert "proxy.example" in str(caught.value)
    assert masked("socks5h://a%40b:p@w.example:1080") == "socks5h://***@w.example:1080"


async def test_the_configured_gateway_url_is_used_for_connecting_and_resuming(
    start_proxy: Callable[[str], asyncio.Future[Pproxy]],
    sim: SimulatedDiscord,
    start_bridge: BridgeFactory,
) -> None:
    # A reverse proxy in front of the gateway: a plain TCP tunnel to the simulation.
    gateway = URL(sim.gateway_url)
    tunnel = await start_proxy(f"tunnel{{{gateway.host}:{gateway.port}}}://127.0.0.1:PORT")
    bridge = await start_bridge(discord={"gateway_url": f"ws://127.0.0.1:{tunnel.port}/gateway"})
    assert len(tunnel.tunnels) == 1, "the gateway connection went to the configured URL"
    # READY's resume_gateway_url (the simulation's own address) is not where RESUME goes.
    await sim.drop_gateway(resumable=True)
    await tunnel.wait_for(lambda tunnels: len(tunnels) == 2)
    # The new tunnel comes after discord.py's "disconnect": ready again means resumed.
    async with asyncio.timeout(10):
        await bridge.backend.wait_ready()
    assert sim.gateway.resumes == 1
    deltas, finish = await stream_text(bridge, "hello")
    assert "".join(deltas)
    assert finish == "stop"


@pytest.mark.parametrize("scheme", ["http", "socks5", "socks5h"])
async def test_image_fetches_through_a_proxy_keep_the_address_guard(
    scheme: str, sim: SimulatedDiscord, start_proxy: Callable[[str], asyncio.Future[Pproxy]]
) -> None:
    proxy_server = await start_proxy("http+socks5://127.0.0.1:PORT")
    proxy = parse_proxy(f"{scheme}://127.0.0.1:{proxy_server.port}")
    item = sim.world.add_attachment("red.png", "image/png", solid_png(4, 4, (255, 0, 0)))
    url = URL(attachment_url(sim.world, sim.channel_id, item))
    by_name = str(url.with_host("localhost"))
    async with Outbound(proxy=proxy) as guarded:
        for refused in (str(url), by_name):
            with pytest.raises(FetchFailed):
                await guarded.fetch(refused, 1024 * 1024)
    assert proxy_server.tunnels == [], "the proxy is never asked for a refused address"
    # A check that lets loopback through: the proxy is asked for the checked address, never a name.
    async with Outbound(proxy=proxy, refused=lambda ip: is_refused(ip) and not ip.is_loopback) as lan:
        assert (await lan.fetch(by_name, 1024 * 1024)).startswith(b"\x89PNG")
    assert proxy_server.tunnels == [f"127.0.0.1:{url.port}"]


async def test_image_fetches_follow_discord_proxy_unless_told_otherwise(
    sim: SimulatedDiscord, tmp_path: Path, start_proxy: Callable[[str], asyncio.Future[Pproxy]]
) -> None:
    dead = f"socks5://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"
    with pytest.raises(StartupError) as caught:
        await _image_proxy(sim_settings(sim, tmp_path, discord={"proxy": dead}))
    assert PASSWORD not in str(caught.value), "images.proxy unset follows discord.proxy"
    direct = sim_settings(sim, tmp_path, discord={"proxy": dead}, images={"proxy": ""})
    assert await _image_proxy(direct) is None, '"" fetches directly'
    own = await start_proxy("socks5://127.0.0.1:PORT")
    chosen = sim_settings(
        sim, tmp_path, discord={"proxy": dead}, images={"proxy": f"socks5://127.0.0.1:{own.port}"}
    )
    assert await _image_proxy(chosen) == parse_proxy(f"socks5://127.0.0.1:{own.port}")


async def test_the_doctor_reaches_discord_through_the_proxy(
    start_proxy: Callable[[str], asyncio.Future[Pproxy]], sim: SimulatedDiscord, tmp_path: Path
) -> None:
    proxy = await start_proxy(f"socks5://127.0.0.1:PORT#{USER}:{PASSWORD}")
    url = f"socks5://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}"
    lines, code = await run_doctor(sim_settings(sim, tmp_path, discord={"proxy": url}))
    report = "\n".join(lines)
    assert code == 0, report
    assert f"ok    proxy: socks5://***@127.0.0.1:{proxy.port} accepts connections" in report
    assert PASSWORD not in report
    assert USER not in report
    discord_at = f"{URL(sim.api_base).host}:{URL(sim.api_base).port}"
    await proxy.wait_for(lambda tunnels: discord_at in tunnels)


async def test_the_doctor_names_a_dead_proxy_without_its_credentials(
    sim: SimulatedDiscord, tmp_path: Path
) -> None:
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"
    lines, code = await run_doctor(sim_settings(sim, tmp_path, discord={"proxy": url}))
    assert code == 1
    (failed,) = [line for line in lines if line.startswith("FAIL")]
    assert failed.startswith("FAIL  proxy: the proxy http://***@127.0.0.1:")
    assert "cannot be reached" in failed
    assert PASSWORD not in "\n".join(lines)


def client_ports(pid: int, port: int) -> set[int]:
    """The local ports of process `pid`'s client sockets connected to `port`."""
    return {
        c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.raddr and c.raddr.port == port
    }


async def test_a_tokens_own_proxy_carries_only_its_calls(
    start_proxy: Callable[[str], asyncio.Future[Pproxy]], sim: SimulatedDiscord
) -> None:
    proxy = await start_proxy(f"socks5://127.0.0.1:PORT#{USER}:{PASSWORD}")
    discord_port = URL(sim.api_base).port or 0
    proxied, direct = sim.user_tokens[:2]
    accounts = AccountSettings()
    own = UserTokenSettings.model_validate(
        {"token": proxied, "proxy": f"socks5://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}"}
    )
    async with aiohttp.ClientSession() as session:
        rest = DiscordRest(sim.api_base, session)
        try:
            through_proxy = user_credential(own, accounts, "proxied")
            # Two first calls at once still open a single session for the proxy.
            await asyncio.gather(rest.user_id(through_proxy), rest.user_id(through_proxy))
            assert len(rest._proxied) == 1
            await rest.post_message(sim.channel_id, {"content": "hello"}, through_proxy)
            straight_on = user_credential(
                UserTokenSettings.model_validate({"token": direct}), accounts, "direct"
            )
            await rest.user_id(straight_on)
            await rest.post_message(sim.channel_id, {"content": "hello"}, straight_on)
            # The calls arrived from pproxy's sockets, the others from this process's own.
            through = {seen.peer[1] for seen in sim.requests_by(proxied) if seen.peer}
            straight = {seen.peer[1] for seen in sim.requests_by(direct) if seen.peer}
            assert through
            assert through <= client_ports(proxy.process.pid, discord_port)
            assert straight
            assert straight <= client_ports(os.getpid(), discord_port)
        finally:
            await rest.aclose()
    # Kept-alive tunnels (one per call at once), all to the simulated Discord.
    await proxy.wait_for(lambda tunnels: len(tunnels) >= 2)
    assert proxy.tunnels == [f"127.0.0.1:{discord_port}"] * 2
    assert rest._proxied == {}


async def test_the_bridge_sends_a_tokens_calls_through_its_proxy(
    start_proxy: Callable[[str], asyncio.Future[Pproxy]], sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    proxy = await start_proxy(f"http://127.0.0.1:PORT#{USER}:{PASSWORD}")
    discord_port = URL(sim.api_base).port or 0
    proxied, direct = sim.user_tokens[:2]
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{proxy.port}"
    bridge = await start_bridge(discord={"user_tokens": [{"token": proxied, "proxy": url}, direct]})
    for n in range(2):
        deltas, finish = await stream_text(bridge, f"prompt {n}")
        assert "".join(deltas)
        assert finish == "stop"
    assert len(sim.prompts_by(proxied)) == len(sim.prompts_by(direct)) == 1
    through = {seen.peer[1] for seen in sim.requests_by(proxied) if seen.peer}
    assert through
    assert through <= client_ports(proxy.process.pid, discord_port)
    # The other token and discord.py (no discord.proxy) connect straight.
    others = [seen for seen in sim.requests_seen if seen.account_id != sim.account(proxied).id]
    straight = {seen.peer[1] for seen in others if seen.peer}
    assert straight
    assert straight <= client_ports(os.getpid(), discord_port)
    await proxy.wait_for(lambda tunnels: len(tunnels) >= 1)
    assert set(proxy.tunnels) == {f"127.0.0.1:{discord_port}"}
