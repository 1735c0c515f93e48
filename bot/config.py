"""Settings sections the Discord side reads (composed into the app's settings)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    model_validator,
)

from bot.reset import ResetTime


def _reset_time(value: object) -> ResetTime:
    if isinstance(value, ResetTime):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a string such as '00:00 UTC'")
    return ResetTime.parse(value)


ResetTimeField = Annotated[ResetTime, PlainValidator(_reset_time), PlainSerializer(str)]


def _non_blank(secret: SecretStr) -> SecretStr:
    if not secret.get_secret_value().strip():
        # An empty key would let anyone in who sends "Authorization: Bearer " and nothing more.
        raise ValueError("an API key may not be empty")
    return secret


ApiKey = Annotated[SecretStr, AfterValidator(_non_blank)]

DISCORD_API_BASE = "https://discord.com/api/v10"
# What a user token's requests say they come from unless its own `user_agent` says otherwise: a
# current desktop browser on Discord's web app (aiohttp's own agent marks a script).
DESKTOP_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Safari/537.36"
)


class UserTokenSettings(BaseModel):
    """One Discord user account that posts prompts; what is unset follows `accounts.*`."""

    model_config = ConfigDict(extra="forbid")

    token: SecretStr
    # Shown in logs, /v1/status and metrics instead of "user token #N".
    label: str | None = Field(default=None, min_length=1, max_length=64)
    user_agent: str | None = Field(default=None, min_length=1)
    # This account's own outbound proxy for its REST calls (the same schemes as discord.proxy).
    proxy: SecretStr | None = None
    max_in_flight: int | None = Field(default=None, ge=1)
    daily_cap: int | None = Field(default=None, ge=1)
    min_gap_seconds: float | None = Field(default=None, ge=0)
    enabled: bool = True


def _token_entry(value: object) -> object:
    # Strings, as every release before tables took them (and coze-discord-proxy's variable).
    return {"token": value} if isinstance(value, str | SecretStr) else value


UserToken = Annotated[UserTokenSettings, BeforeValidator(_token_entry)]
# With no [[models]] configured, the one Coze bot in [discord] is served under this name.
DEFAULT_MODEL = "coze"


class DiscordSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bot_token: SecretStr
    guild_id: int
    # Optional once [[models]] names the Coze bots and their channels.
    coze_bot_id: int | None = None
    channel_id: int | None = None
    # Strings, or tables {token, label, user_agent, proxy, max_in_flight, daily_cap,
    # min_gap_seconds, enabled}.
    user_tokens: list[UserToken] = Field(default_factory=list)
    api_base: str = DISCORD_API_BASE
    # Prompts being posted (thread, then message) at once; more wait their turn. A burst of new
    # requests otherwise queues ahead of every open stream's next delta in the event loop.
    max_concurrent_posts: int = Field(default=16, ge=1)
    # A thread's title, which every member of the server can read: "neutral" is `chat · <id>`;
    # "prompt" starts with the prompt's first words.
    thread_names: Literal["neutral", "prompt"] = "neutral"
    # Private threads: only their members (the bridge's accounts and the Coze bot) and the
    # server's moderators read the conversations.
    private_threads: bool = False
    # An outbound proxy for everything sent to Discord (gateway, REST) and, unless images.proxy
    # says otherwise, image fetches: http://, https://, socks5:// or socks5h://, with optional
    # user:pass@. None: direct.
    proxy: SecretStr | None = None
    # The gateway's websocket URL, for a reverse proxy in front of Discord; None: what
    # GET {api_base}/gateway/bot answers.
    gateway_url: str | None = None


class ModelSettings(BaseModel):
    """One Coze bot served under a model name."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    coze_bot_id: int
    channel_id: int
    # When given, only these API keys may use the model (they are accepted as API keys too).
    api_keys: list[ApiKey] = Field(default_factory=list)


class CompletionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quiet_seconds: float = Field(default=4.0, gt=0)
    first_reply_timeout: float = Field(default=60.0, gt=0)
    max_reply_seconds: float = Field(default=300.0, gt=0)
    # "There are too many users now": the prompt is posted again after this, then twice as long.
    busy_backoff_seconds: float = Field(default=2.0, ge=0)
    # Coze cuts a reply at 2000 characters with an ellipsis; say "continue" up to this many times.
    auto_continue: int = Field(default=0, ge=0, le=10)


class AccountSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # When Coze's daily quotas start again: "HH:MM" and a zone ("UTC", "Asia/Shanghai", "+08:00").
    reset_at: ResetTimeField = Field(default_factory=lambda: ResetTime.parse("00:00 UTC"))
    # Defaults for every user token (each may set its own in discord.user_tokens):
    # prompts one token may have awaiting Coze at once;
    max_in_flight: int = Field(default=2, ge=1)
    # the least time between two prompt posts of one token, plus a random [0, jitter] on top;
    min_gap_seconds: float = Field(default=1.5, ge=0)
    jitter_seconds: float = Field(default=1.0, ge=0)
    # posts a day, after which the token rests until reset_at (None: no cap);
    daily_cap: int | None = Field(default=None, ge=1)
    # the browser its requests say they come from.
    user_agent: str = Field(default=DESKTOP_USER_AGENT, min_length=1)
    # Requests that may wait for a token that is free to post; more are 503 `overloaded`.
    max_queue: int = Field(default=100, ge=0)
    # How often each token's /users/@me is checked (nothing is posted), with some jitter.
    check_hours: float = Field(default=6.0, gt=0)


SQLITE_SCHEME = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")
DEFAULT_DATABASE = Path("data/bridge.db")


def masked_url(url: str) -> str:
    """`url` with any user:pass@ replaced, so it can be shown (as bot.proxy masks proxies)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


class StorageSettings(BaseModel):
    """Where the bridge keeps its state: `url`, or the older `path` of a SQLite file.

    After validation both say the same: `url` is always set, and `path` is the SQLite file
    (None on PostgreSQL).
    """

    model_config = ConfigDict(extra="forbid")

    # sqlite:///data/bridge.db (a relative path; sqlite:////var/lib/x.db an absolute one) or
    # postgresql://user:pass@host[:port]/db. A secret: it may hold a password.
    url: SecretStr | None = None
    # The SQLite file, as before `url`: the same as url = "sqlite:///<path>". Empty is unset, so
    # that BRIDGE_STORAGE__PATH= clears a path an image or unit sets, to give a PostgreSQL url.
    path: Annotated[Path | None, BeforeValidator(lambda value: None if value == "" else value)] = None
    thread_ttl_hours: float = Field(default=72.0, gt=0)

    @model_validator(mode="after")
    def _one_database(self) -> StorageSettings:
        if self.url is None:
            path = self.path or DEFAULT_DATABASE
            self.path, self.url = path, SecretStr(f"{SQLITE_SCHEME}{path}")
            return self
        url = self.url.get_secret_value()
        if url.startswith(SQLITE_SCHEME) and len(url) > len(SQLITE_SCHEME):
            path = Path(url.removeprefix(SQLITE_SCHEME))
            if self.path is not None and self.path != path:
                raise ValueError(f"storage.url names {path} and storage.path {self.path}: give one of them")
            self.path = path
            return self
        if urlsplit(url).scheme in POSTGRES_SCHEMES:
            if self.path is not None:
                raise ValueError(
                    "storage.path is a SQLite file, and storage.url a PostgreSQL database: give one"
                )
            return self
        raise ValueError(
            f"storage.url {masked_url(url)!r} is neither sqlite:///path nor postgresql://user:pass@host/db"
        )

    @property
    def postgresql(self) -> str | None:
        """The PostgreSQL URL (password and all), or None for SQLite at `path`."""
        return None if self.path is not None or self.url is None else self.url.get_secret_value()


def _host_name() -> str:
    return socket.gethostname() or "bridge"


class InstanceSettings(BaseModel):
    """This bridge among several sharing one PostgreSQL database (issue 15)."""

    model_config = ConfigDict(extra="forbid")

    # Shown on /v1/status beside what this instance holds; unique among the instances.
    name: str = Field(default_factory=_host_name, min_length=1, max_length=64)
    # A dead instance's conversation holds, in-flight posts and lead are free after this long.
    lease_seconds: float = Field(default=30.0, ge=3.0, le=3600.0)


class BackendConfig(Protocol):
    """What the Discord side reads from the application's settings."""

    @property
    def discord(self) -> DiscordSettings: ...

    @property
    def completion(self) -> CompletionSettings: ...

    @property
    def accounts(self) -> AccountSettings: ...

    @property
    def storage(self) -> StorageSettings: ...

    @property
    def instance(self) -> InstanceSettings: ...

    @property
    def model_routes(self) -> list[ModelSettings]: ...
