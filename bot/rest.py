"""Raw Discord REST for what discord.py cannot do: posting as a user account.

A Coze-published bot ignores prompts authored by bot accounts (since early 2024), so prompts
go out with user-account tokens; discord.py no longer supports those, hence plain aiohttp.
"""

from __future__ import annotations

import asyncio
import io
import json as json_module
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import version
from typing import Any, TypedDict

import aiohttp
from pydantic import SecretStr

from bot.interface import ImageFile, StartupError
from bot.payloads import MessagePayload
from bot.proxy import configured, connector, masked

log = logging.getLogger(__name__)

# Waits longer than this are not worth holding an HTTP request for; the caller gets an error.
MAX_RATE_LIMIT_WAIT = 30.0
MAX_ATTEMPTS = 4
THREAD_TIMEOUT = 10.0
# The form Discord asks of bots ("DiscordBot ($url, $version)"), as discord.py sends it.
BOT_USER_AGENT = (
    f"DiscordBot (coze-discord-bridge, {version('coze-discord-bridge')}) "
    f"Python/{sys.version_info[0]}.{sys.version_info[1]} aiohttp/{aiohttp.__version__}"
)


class Credential:
    """A Discord token, the headers it sends and the proxy it goes through.

    Never shows the token or the proxy's credentials. A bot token with no `headers` sends
    discord.py's kind of User-Agent, never a browser's.
    """

    __slots__ = ("authorization", "headers", "label", "proxy")

    def __init__(
        self,
        token: str,
        *,
        is_bot: bool,
        label: str,
        headers: Mapping[str, str] | None = None,
        proxy: SecretStr | None = None,
    ) -> None:
        # User tokens go in Authorization as they are; bot tokens need the "Bot " prefix.
        self.authorization = f"Bot {token}" if is_bot else token
        self.label = label
        # Always a User-Agent of our own: aiohttp's would mark the request as a script's.
        self.headers: Mapping[str, str] = dict(headers) if headers else {"User-Agent": BOT_USER_AGENT}
        # None or "": the session DiscordRest was given (direct, or discord.proxy).
        self.proxy = proxy if proxy is not None and proxy.get_secret_value() else None

    def __repr__(self) -> str:
        return f"<Credential {self.label}>"


class AllowedMentions(TypedDict):
    parse: list[str]
    users: list[str]


class MessageCreate(TypedDict, total=False):
    content: str
    allowed_mentions: AllowedMentions
    # With enforce_nonce, Discord answers a second post with the same nonce (from the same
    # user, within minutes) with the first message instead of making another.
    nonce: str
    enforce_nonce: bool


class RestError(Exception):
    """A Discord REST call that failed; `status` is None for network errors.

    `code` is Discord's own error code from the JSON body (e.g. 40002: verify your account).
    """

    def __init__(self, message: str, *, status: int | None, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class DiscordRest:
    """Discord's REST API through `session`, or through a session of its own for each distinct
    proxy a credential names (opened on first use, closed by `aclose`)."""

    def __init__(self, api_base: str, session: aiohttp.ClientSession) -> None:
        self.api_base = api_base.rstrip("/")
        self._session = session
        self._proxied: dict[str, aiohttp.ClientSession] = {}
        self._opening = asyncio.Lock()

    async def aclose(self) -> None:
        """Close the per-proxy sessions (the one given to the constructor is its owner's)."""
        sessions, self._proxied = list(self._proxied.values()), {}
        for session in sessions:
            await session.close()

    async def _session_for(self, credential: Credential) -> aiohttp.ClientSession:
        if credential.proxy is None:
            return self._session
        url = credential.proxy.get_secret_value()
        if (session := self._proxied.get(url)) is not None:
            return session
        async with self._opening:
            if (session := self._proxied.get(url)) is not None:
                return session
            try:
                # Checked reachable first, for an error that says so rather than a vague one.
                proxy = await configured(credential.proxy)
            except StartupError as exc:
                raise RestError(f"{credential.label}: {exc}", status=None) from None
            session = aiohttp.ClientSession(connector=connector(proxy), timeout=self._session.timeout)
            self._proxied[url] = session
            return session

    async def request(
        self,
        method: str,
        path: str,
        credential: Credential,
        *,
        json: Any = None,
        form: Callable[[], aiohttp.FormData] | None = None,
        attempt_seconds: float | None = None,
    ) -> Any:
        """One call, waiting out 429s; `form` builds a multipart body afresh for each attempt.

        `attempt_seconds` bounds each attempt instead of the session's default.
        """
        url = self.api_base + path
        session = await self._session_for(credential)
        headers = {**credential.headers, "Authorization": credential.authorization}
        options: dict[str, Any] = {"headers": headers}
        if attempt_seconds is not None:
            options["timeout"] = aiohttp.ClientTimeout(total=attempt_seconds)
        for _attempt in range(MAX_ATTEMPTS):
            data = form() if form is not None else None
            try:
                async with session.request(method, url, json=json, data=data, **options) as resp:
                    body: Any = await resp.json(content_type=None) if resp.content_length != 0 else {}
                    if resp.status == 429:
                        await self._rate_limited(resp, body, credential)
                        continue
                    if resp.status >= 400:
                        error = body if isinstance(body, dict) else {}
                        code = error.get("code")
                        raise RestError(
                            f"Discord answered {method} with HTTP {resp.status}: {error.get('message', resp.reason)}",
                            status=resp.status,
                            code=code if isinstance(code, int) else None,
                        )
                    return body
            except TimeoutError:
                raise RestError("Discord did not answer in time", status=None) from None
            except (aiohttp.ClientError, ValueError) as exc:
                via = (
                    ""
                    if credential.proxy is None
                    else f" through the proxy {masked(credential.proxy.get_secret_value())}"
                )
                raise RestError(
                    f"Discord could not be reached{via} ({type(exc).__name__})", status=None
                ) from None
        raise RestError("Discord kept rate-limiting the request", status=429)

    async def _rate_limited(self, resp: aiohttp.ClientResponse, body: Any, credential: Credential) -> None:
        # Discord puts the wait (in seconds, fractional) in the body; Retry-After is the fallback.
        wait = body.get("retry_after") if isinstance(body, dict) else None
        if not isinstance(wait, int | float):
            wait = float(resp.headers.get("Retry-After", "1"))
        if wait > MAX_RATE_LIMIT_WAIT:
            raise RestError(f"Discord rate-limited {credential.label} for {wait:.0f}s", status=429)
        log.info("rate-limited on %s for %.2fs", credential.label, wait)
        await asyncio.sleep(wait)

    async def post_message(
        self,
        channel_id: int,
        payload: MessageCreate,
        credential: Credential,
        *,
        files: Sequence[ImageFile] = (),
    ) -> int:
        """Post a message; with `files`, as Discord's multipart upload with real attachments."""
        path = f"/channels/{channel_id}/messages"
        if not files:
            created = await self.request("POST", path, credential, json=payload)
            return int(created["id"])

        def form() -> aiohttp.FormData:
            body = aiohttp.FormData()
            attachments = [{"id": n, "filename": f.filename} for n, f in enumerate(files)]
            body.add_field(
                "payload_json",
                json_module.dumps({**payload, "attachments": attachments}),
                content_type="application/json",
            )
            for n, file in enumerate(files):
                # A stream, not bytes: aiohttp warns of (and copies) bytes bodies over 1 MiB.
                body.add_field(
                    f"files[{n}]",
                    io.BytesIO(file.data),
                    filename=file.filename,
                    content_type=file.content_type,
                )
            return body

        created = await self.request("POST", path, credential, form=form)
        return int(created["id"])

    async def create_thread(
        self, channel_id: int, name: str, credential: Credential, *, private: bool = False
    ) -> int:
        """A thread in a text channel, archived by Discord after an idle hour: public (type 11),
        or private (type 12: only its members and moderators see it; nobody else may invite)."""
        body: dict[str, Any] = {"name": name, "type": 12 if private else 11, "auto_archive_duration": 60}
        if private:
            body["invitable"] = False
        created = await self.request(
            "POST",
            f"/channels/{channel_id}/threads",
            credential,
            json=body,
            # A caller waits on this before anything streams; Discord's 5xx retries would take longer.
            attempt_seconds=THREAD_TIMEOUT,
        )
        return int(created["id"])

    async def add_thread_member(self, thread_id: int, user_id: int, credential: Credential) -> None:
        """Make `user_id` a member of the thread (a no-op for a member already)."""
        await self.request(
            "PUT",
            f"/channels/{thread_id}/thread-members/{user_id}",
            credential,
            attempt_seconds=THREAD_TIMEOUT,
        )

    async def user_id(self, credential: Credential) -> int:
        """The id of the account behind `credential`."""
        me = await self.request("GET", "/users/@me", credential, attempt_seconds=THREAD_TIMEOUT)
        return int(me["id"])

    async def archive_thread(self, thread_id: int, credential: Credential) -> None:
        await self.request("PATCH", f"/channels/{thread_id}", credential, json={"archived": True})

    async def messages_after(
        self, channel_id: int, after: int, credential: Credential
    ) -> list[MessagePayload]:
        """Up to 100 messages newer than `after`, oldest first."""
        found = await self.request(
            "GET", f"/channels/{channel_id}/messages?after={after}&limit=100", credential
        )
        return sorted(found, key=lambda message: int(message["id"])) if isinstance(found, list) else []

    async def gateway_url(self, credential: Credential) -> str:
        data = await self.request("GET", "/gateway/bot", credential)
        return str(data["url"])
