"""Outbound proxies (http://, https://, socks5://, socks5h://): one aiohttp connector for them all.

Discord's traffic (gateway, discord.py's REST, the user-token REST client) and the guarded image
client share it. Every connection is a tunnel (HTTP CONNECT or SOCKS5) to the address aiohttp's
resolver gave: the image client's resolver checks that address, so the proxy is only ever asked
for one that passed the check, and never resolves a name of its own to somewhere refused.

It lives here rather than in `bot` because the API may reach `bot` only through its port, and
both sides need it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import python_socks
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_proto import ResponseHandler
from pydantic import SecretStr
from python_socks import ProxyType
from python_socks.async_.asyncio.v2 import Proxy as SocksProxy

from bot.interface import StartupError

SCHEMES = {
    "http": ProxyType.HTTP,
    "https": ProxyType.HTTP,
    "socks5": ProxyType.SOCKS5,
    "socks5h": ProxyType.SOCKS5,
}
CHECK_SECONDS = 5.0


@dataclass(frozen=True)
class ProxyUrl:
    """A parsed proxy URL; `shown` is it without its credentials (for logs and errors)."""

    kind: ProxyType
    host: str
    port: int
    username: str | None
    password: str | None
    # socks5h (and http's CONNECT with a name): the proxy resolves the names it is given.
    remote_dns: bool
    # https://: TLS to the proxy itself.
    tls: bool
    shown: str


def masked(url: str) -> str:
    """`url` with any user:pass@ replaced, so it can be shown."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def parse_proxy(url: str) -> ProxyUrl:
    """Raise StartupError (credentials masked) for what is not a usable proxy URL."""
    shown = masked(url)
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in SCHEMES or not parts.hostname or port is None:
        raise StartupError(f"proxy {shown!r} is not scheme://host:port with http, https, socks5 or socks5h")
    return ProxyUrl(
        kind=SCHEMES[parts.scheme],
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        remote_dns=parts.scheme != "socks5",
        tls=parts.scheme == "https",
        shown=shown,
    )


async def check_reachable(proxy: ProxyUrl) -> None:
    """A StartupError now for a proxy nothing listens on, rather than a vague one at login."""
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            _, writer = await asyncio.open_connection(proxy.host, proxy.port)
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise StartupError(f"the proxy {proxy.shown} cannot be reached: {reason}") from None
    writer.close()
    await writer.wait_closed()


async def configured(secret: SecretStr | None) -> ProxyUrl | None:
    """The proxy a setting names, checked reachable; None (or "") is a direct connection."""
    if secret is None or not secret.get_secret_value():
        return None
    proxy = parse_proxy(secret.get_secret_value())
    await check_reachable(proxy)
    return proxy


class NameResolver(AbstractResolver):
    """Resolves nothing: the name goes to the proxy as it is (resolved by it, or by python-socks
    locally for socks5://)."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [{"hostname": host, "host": host, "port": port, "family": family, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


class _TunnelProtocol(ResponseHandler):
    # Python 3.11.5+ closes a transport whose StreamWriter is collected: keep python-socks's alive.
    def __init__(self, loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter) -> None:
        super().__init__(loop)
        self._writer = writer


class ProxyConnector(aiohttp.TCPConnector):
    """A TCPConnector whose every connection is tunnelled through `proxy` to the resolved address.

    `resolver` decides what the proxy is asked for: NameResolver (the default) hands it the name;
    a checking resolver hands it only addresses that passed the check.
    """

    def __init__(self, proxy: ProxyUrl, *, resolver: AbstractResolver | None = None, **kwargs: Any) -> None:
        super().__init__(resolver=resolver or NameResolver(), **kwargs)
        self.proxy = proxy
        self._proxy_tls = ssl.create_default_context() if proxy.tls else None

    async def _wrap_create_connection(
        self,
        *args: Any,
        addr_infos: list[Any],
        req: aiohttp.ClientRequest,
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp calls this with its own signature)
        client_error: type[Exception] = aiohttp.ClientConnectorError,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, ResponseHandler]:
        host, port = addr_infos[0][4][0], addr_infos[0][4][1]
        tls: ssl.SSLContext | None = kwargs.get("ssl")
        proxy = self.proxy
        tunnel = SocksProxy(
            proxy_type=proxy.kind,
            host=proxy.host,
            port=proxy.port,
            username=proxy.username,
            password=proxy.password,
            rdns=proxy.remote_dns,
            proxy_ssl=self._proxy_tls,
        )
        try:
            stream = await tunnel.connect(dest_host=host, dest_port=port, timeout=timeout.sock_connect)
            if tls is not None:
                # The certificate is for the name asked for, not for the address the tunnel reached.
                try:
                    await stream.start_tls(hostname=kwargs.get("server_hostname") or host, ssl_context=tls)
                except BaseException:
                    await stream.close()
                    raise
        except (python_socks.ProxyError, python_socks.ProxyTimeoutError, OSError) as exc:
            # Said without the proxy's credentials (python-socks names only its host and port).
            failure = OSError(getattr(exc, "errno", None) or 0, f"via proxy {proxy.shown}: {exc}")
            raise client_error(req.connection_key, failure) from None
        transport = stream.writer.transport
        assert isinstance(transport, asyncio.Transport)
        protocol = _TunnelProtocol(self._loop, stream.writer)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        return transport, protocol


def connector(proxy: ProxyUrl | None, **kwargs: Any) -> aiohttp.TCPConnector:
    """A connector through `proxy`, or a direct one for None."""
    return aiohttp.TCPConnector(**kwargs) if proxy is None else ProxyConnector(proxy, **kwargs)
