"""The gateway websocket: HELLO, IDENTIFY/READY, heartbeats, dispatches, RESUME and drops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from simdiscord import payloads
from simdiscord.world import GATEWAY_MESSAGE_CONTENT, GATEWAY_MESSAGE_CONTENT_LIMITED, World

log = logging.getLogger(__name__)

MESSAGE_CONTENT_INTENT = 1 << 15
HEARTBEAT_MS = 41_250
REPLAY_LIMIT = 10_000
# discord.py resumes after these close codes; 4004 (authentication failed) and 4014 (a
# privileged intent the application may not have) are final.
RESUMABLE_CLOSE = 4000
AUTH_FAILED_CLOSE = 4004
DISALLOWED_INTENTS_CLOSE = 4014


class Compressor(Protocol):
    def __call__(self, data: bytes) -> bytes: ...


def compressor_for(kind: str | None) -> Compressor | None:
    """One streaming compressor per connection, flushed after every message."""
    if kind == "zlib-stream":
        stream = zlib.compressobj()
        # Z_SYNC_FLUSH ends each message with 00 00 ff ff, which the client waits for.
        return lambda data: stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH)
    if kind == "zstd-stream":
        import zstandard

        zstd = zstandard.ZstdCompressor().compressobj()
        # A flushed block makes each websocket message decompress to one whole payload.
        return lambda data: zstd.compress(data) + zstd.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    return None


class Session:
    """One identified bot session; it outlives its websocket so it can be resumed."""

    def __init__(self, account_id: int, intents: int) -> None:
        self.id = secrets.token_hex(16)
        self.account_id = account_id
        self.content = bool(intents & MESSAGE_CONTENT_INTENT)
        self.seq = 0
        self.sent: deque[tuple[int, str, Any]] = deque(maxlen=REPLAY_LIMIT)
        self.socket: Connection | None = None


class Connection:
    def __init__(self, ws: web.WebSocketResponse, compress: Compressor | None) -> None:
        self.ws = ws
        self._compress = compress
        self._lock = asyncio.Lock()

    async def send(self, payload: dict[str, Any]) -> None:
        text = json.dumps(payload, separators=(",", ":"))
        async with self._lock:  # compressed streams must go out in the order they were made
            if self._compress is None:
                await self.ws.send_str(text)
            else:
                await self.ws.send_bytes(self._compress(text.encode()))


class Gateway:
    def __init__(self, world: World, url: Callable[[], str]) -> None:
        self.world = world
        self._url = url
        self.sessions: dict[str, Session] = {}
        self.identified = asyncio.Event()
        self.resumes = 0
        self.identifies = 0
        # IDENTIFYs closed with 4014 for asking for an intent the application lacks.
        self.refused = 0

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        conn = Connection(ws, compressor_for(request.query.get("compress")))
        session: Session | None = None
        await conn.send({"op": 10, "d": {"heartbeat_interval": HEARTBEAT_MS}, "s": None, "t": None})
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(frame.data)
                session = await self._on_payload(conn, session, payload) or session
        finally:
            if session is not None and session.socket is conn:
                session.socket = None
        return ws

    async def _on_payload(
        self, conn: Connection, session: Session | None, payload: dict[str, Any]
    ) -> Session | None:
        op, data = payload.get("op"), payload.get("d") or {}
        if op == 1:
            await conn.send({"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:
            return await self._identify(conn, data)
        elif op == 6:
            return await self._resume(conn, data)
        return None

    async def _identify(self, conn: Connection, data: dict[str, Any]) -> Session | None:
        account = self.world.authenticate(f"Bot {data.get('token', '')}")
        if account is None:
            await conn.ws.close(code=AUTH_FAILED_CLOSE, message=b"Authentication failed.")
            return None
        intents = int(data.get("intents", 0))
        if intents & MESSAGE_CONTENT_INTENT and not self._content_allowed():
            # As Discord does when the Developer Portal's Message Content switch is off.
            self.refused += 1
            self.world.changed()
            await conn.ws.close(code=DISALLOWED_INTENTS_CLOSE, message=b"Disallowed intent(s).")
            return None
        session = Session(account.id, intents)
        self.sessions[session.id] = session
        session.socket = conn
        self.identifies += 1
        ready = {
            "v": 10,
            "user": payloads.user(account),
            "guilds": [{"id": str(self.world.guild_id), "unavailable": True}],
            "session_id": session.id,
            "resume_gateway_url": self._url(),
            "application": {"id": str(account.id), "flags": self.world.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "shard": [0, 1],
        }
        await self._send(session, "READY", ready)
        await self._send(session, "GUILD_CREATE", payloads.guild(self.world))
        self.identified.set()
        return session

    def _content_allowed(self) -> bool:
        return bool(
            self.world.application_flags & (GATEWAY_MESSAGE_CONTENT | GATEWAY_MESSAGE_CONTENT_LIMITED)
        )

    async def _resume(self, conn: Connection, data: dict[str, Any]) -> Session | None:
        session = self.sessions.get(data.get("session_id", ""))
        account = self.world.authenticate(f"Bot {data.get('token', '')}")
        if session is None or account is None or account.id != session.account_id:
            # d=false: the session is gone, identify anew (discord.py then drops its state).
            await conn.send({"op": 9, "d": False, "s": None, "t": None})
            return None
        session.socket = conn
        self.resumes += 1
        after = int(data.get("seq") or 0)
        for seq, kind, event in list(session.sent):
            if seq > after:
                await conn.send({"op": 0, "s": seq, "t": kind, "d": event})
        await self._send(session, "RESUMED", {})
        return session

    async def dispatch(self, kind: str, build: Callable[[bool], dict[str, Any]]) -> None:
        """Send an event to every session; `build(with_content)` makes its data once per variant."""
        variants: dict[bool, dict[str, Any]] = {}
        for session in list(self.sessions.values()):
            data = variants.get(session.content)
            if data is None:
                data = variants[session.content] = build(session.content)
            await self._send(session, kind, data)

    async def _send(self, session: Session, kind: str, data: Any) -> None:
        session.seq += 1
        session.sent.append((session.seq, kind, data))
        if session.socket is None:
            return  # kept for the replay when the session resumes
        try:
            await session.socket.send({"op": 0, "s": session.seq, "t": kind, "d": data})
        except (ConnectionError, RuntimeError):
            session.socket = None

    async def drop(self, *, resumable: bool = True) -> None:
        """Cut every bot's websocket; unless resumable, forget the sessions so RESUME fails."""
        for session_id, session in list(self.sessions.items()):
            conn = session.socket
            session.socket = None
            if not resumable:
                del self.sessions[session_id]
            if conn is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await conn.ws.close(code=RESUMABLE_CLOSE, message=b"Simulated drop")

    async def close(self) -> None:
        for session in self.sessions.values():
            if session.socket is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await session.socket.ws.close(code=WSCloseCode.GOING_AWAY)
        self.sessions.clear()
