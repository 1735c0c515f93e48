"""The one guarded HTTP client for fetches the bridge makes on a caller's behalf.

A caller's URL must not reach the bridge's own network (SSRF): only http(s), every address
checked, the connection made to the address that was checked (no second DNS lookup to rebind),
redirects followed by hand with each hop checked, and bodies read within a size budget.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from bot.proxy import NameResolver, ProxyUrl, connector

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressCheck = Callable[[IPAddress], bool]

MAX_REDIRECTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024
# Beyond what `ipaddress` calls private (as of Python 3.11): CGNAT and all of IETF's 192.0.0.0/24.
REFUSED_V4 = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("192.0.0.0/24"))
# The well-known NAT64 prefix carries an IPv4 address in its last 32 bits.
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchFailed(Exception):
    """The URL did not give a body: the detail is for the log, never for the caller."""


class TooLarge(Exception):
    """The body is larger than `limit` bytes (decoded)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


class Budget:
    """Bytes several fetches may read together (all the attachments of one prompt)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        self.used += size
        if self.used > self.limit:
            raise BudgetExceeded(self.limit)


class BudgetExceeded(Exception):
    """The fetches sharing a Budget read more than its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"together larger than {limit} bytes")
        self.limit = limit


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    value = int(ip)
    # IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks); :: and ::1 are IPv6's own.
    if value >> 32 == 0 and value > 1:
        return ipaddress.IPv4Address(value)
    if ip in NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return None


def is_refused(ip: IPAddress) -> bool:
    """Whether `ip` is outside the public internet (or stands for such an IPv4 address)."""
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(int(ip))  # drop a %scope
        inner = _embedded_ipv4(ip)
        if inner is not None and is_refused(inner):
            return True
        if ip.ipv4_mapped is not None or (inner is not None and int(ip) >> 32 == 0):
            return False  # the IPv4 address it stands for was judged just above
        if ip.is_site_local:
            return True
    elif any(ip in network for network in REFUSED_V4):
        return True
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def literal_address(host: str) -> IPAddress | None:
    """The address when `host` is an IP literal (aiohttp connects to those without resolving)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_url(url: URL, refused: AddressCheck | None) -> None:
    """Refuse what no connection may be opened for (the resolver checks hostnames later)."""
    if url.scheme not in ("http", "https") or not url.host:
        raise FetchFailed(f"not an http(s) URL: {str(url)[:200]!r}")
    address = literal_address(url.host)
    if address is not None and refused is not None and refused(address):
        raise FetchFailed(f"refused address {address}")


class GuardedResolver(AbstractResolver):
    """Resolves with `inner` and drops refused addresses, so aiohttp connects only to checked ones."""

    def __init__(self, inner: AbstractResolver, refused: AddressCheck) -> None:
        self.inner = inner
        self.refused = refused

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        kept = [r for r in results if not self.refused(ipaddress.ip_address(r["host"]))]
        if not kept:
            # An OSError is what aiohttp expects from a failed lookup (ClientConnectorDNSError).
            raise OSError(f"{host!r} resolves only to refused addresses")
        return kept

    async def close(self) -> None:
        await self.inner.close()


class Outbound:
    """An aiohttp session that fetches only what `refused` allows; None allows every address."""

    def __init__(
        self,
        *,
        refused: AddressCheck | None = is_refused,
        connect_timeout: float = 5.0,
        total_timeout: float = 20.0,
        limit: int = 64,
        limit_per_host: int = 4,
        resolver: AbstractResolver | None = None,
        proxy: ProxyUrl | None = None,
    ) -> None:
        self.refused = refused
        self.total_timeout = total_timeout
        # Through a proxy, names are still resolved and checked here: the proxy is asked to
        # tunnel to a checked address only. Unguarded, the proxy may resolve them itself (socks5h).
        inner = resolver or (DefaultResolver() if proxy is None or refused is not None else NameResolver())
        tunnel = connector(
            proxy,
            resolver=inner if refused is None else GuardedResolver(inner, refused),
            # A slow host holds at most `limit_per_host` of the pool's connections.
            limit=limit,
            limit_per_host=limit_per_host,
        )
        self.session = aiohttp.ClientSession(
            connector=tunnel,
            # No cookies carried from one caller's fetch to another's; no proxy from the environment.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.session.close()

    async def fetch(self, url: str, limit: int, budget: Budget | None = None) -> bytes:
        """GET `url` and read its whole (decoded) body, at most `limit` bytes.

        Raises FetchFailed, TooLarge, or BudgetExceeded when `budget` runs out.
        """
        try:
            async with asyncio.timeout(self.total_timeout):
                return await self._fetch(URL(url), limit, budget)
        except TimeoutError:
            raise FetchFailed(f"timed out after {self.total_timeout} s") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise FetchFailed(f"{type(exc).__name__}: {exc}") from None

    async def _fetch(self, url: URL, limit: int, budget: Budget | None) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url, self.refused)
            async with self.session.get(url, allow_redirects=False) as response:
                location = response.headers.get("Location")
                if response.status in REDIRECTS and location:
                    url = response.url.join(URL(location))
                    continue
                if not 200 <= response.status < 300:
                    raise FetchFailed(f"HTTP {response.status}")
                return await _read(response, limit, budget)
        raise FetchFailed(f"more than {MAX_REDIRECTS} redirects")


async def _read(response: aiohttp.ClientResponse, limit: int, budget: Budget | None) -> bytes:
    # Content-Length counts encoded bytes: it can only refuse early when nothing is compressed.
    if "Content-Encoding" not in response.headers and (response.content_length or 0) > limit:
        raise TooLarge(limit)
    body = bytearray()
    # aiohttp decompresses as it reads: these are decoded bytes, so a small bomb stops at `limit`.
    async for chunk in response.content.iter_chunked(CHUNK):
        body += chunk
        if len(body) > limit:
            raise TooLarge(limit)
        if budget is not None:
            budget.take(len(chunk))
    return bytes(body)
