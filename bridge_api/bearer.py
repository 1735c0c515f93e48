"""The API key a caller presents, and the constant-time check of it against accepted keys."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from aiohttp import web


def presented_key(request: web.Request) -> str | None:
    """The key from `Authorization: Bearer <key>`, else from `proxy-secret`; None when neither."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        return given.strip()
    # coze-discord-proxy's clients send their secret in this header.
    return request.headers.get("proxy-secret", "").strip() or None


def matches_any(presented: str | None, accepted: Iterable[bytes]) -> bool:
    """Whether `presented` is one of `accepted` (False for none presented, or none accepted)."""
    # aiohttp keeps a header's non-UTF-8 bytes as surrogates: they round-trip, and never match.
    candidate = (presented or "").encode("utf-8", "surrogateescape")
    matched = False
    # Compare against every key, in constant time, so timing tells nothing about any of them.
    for key in accepted:
        matched |= hmac.compare_digest(candidate, key)
    return matched
