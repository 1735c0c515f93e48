"""Application settings: a TOML file, overridden by `BRIDGE_*` environment variables."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from pydantic_settings.sources.utils import parse_env_vars

from bot.config import (
    DEFAULT_MODEL,
    AccountSettings,
    ApiKey,
    CompletionSettings,
    DiscordSettings,
    InstanceSettings,
    ModelSettings,
    StorageSettings,
)
from bot.interface import Limits
from bridge_api.compat import BOT_CONFIG, CompatError, proxy_settings

# The variables the Settings being built read: the process environment over an --env-file's.
_building_from: ContextVar[Mapping[str, str]] = ContextVar("_building_from")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    keys: list[ApiKey] = Field(default_factory=list)
    # Keys for /admin/* (and nothing else); without them the admin endpoints are off.
    admin_keys: list[ApiKey] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # A client that has not sent a request's headers this long after connecting (or after its
    # previous response) is cut off with 408; so is one whose body takes longer than its own.
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    body_timeout_seconds: float = Field(default=60.0, gt=0)
    # Browser origins that may call the API; they apply only once api.keys are set (or
    # allow_no_auth is): without keys, any web page a local user opens could drive the bridge.
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    # Serve without API keys even beyond loopback, and to browser origins.
    allow_no_auth: bool = False
    # NextChat aborts a stream that shows no bytes for 60 s; Coze can be slower than that to start.
    ping_seconds: float = Field(default=5.0, gt=0)
    # NextChat drops an in-band error frame and shows "empty response": also send it as text.
    stream_errors_as_content: bool = False
    # Images a caller sends (image_url parts) are fetched or decoded up to this size each.
    max_image_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    # All attachments of one prompt together: Discord's limit for an account without Nitro.
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    # A prompt longer than this many Discord messages is refused before anything is posted.
    max_prompt_messages: int = Field(default=10, ge=1)
    # Requests per minute for each API key (or client address, without keys); 0: no limit.
    rate_limit_per_minute: int = Field(default=0, ge=0)
    # Requests that may wait behind the one in flight on a conversation; more are 429.
    max_waiting_per_conversation: int = Field(default=4, ge=0)
    # Requests that may wait for a posting slot (discord.max_concurrent_posts); more are 503.
    max_waiting: int = Field(default=256, ge=0)

    def limits(self) -> Limits:
        return Limits(self.max_prompt_messages, self.max_waiting_per_conversation, self.max_waiting)

    # "error": an unknown model is 404 model_not_found; "first": the first model answers it.
    unknown_model: Literal["error", "first"] = "error"
    # GET / serves the status page (behind api.admin_keys); false turns it off.
    status_page: bool = True
    # A model answered at once without Discord, for gateways' channel tests ("" turns it off).
    health_model: str = "bridge-health"
    # The bridge's address as callers reach it (e.g. "https://bridge.example.com"): with it,
    # images in answers link to the bridge's own lasting copies instead of Discord's expiring
    # links. None: Discord's links, as they come.
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


class ImageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # What POST /v1/images/generations puts before the caller's prompt.
    instruction: str = "Draw an image: "
    # Fetches for callers may reach loopback, private and link-local addresses (an operator whose
    # images sit on their own LAN); off, no caller can make the bridge reach inside the host.
    allow_private_networks: bool = False
    # The proxy for image fetches: None follows discord.proxy, "" fetches directly.
    proxy: SecretStr | None = None
    # Where copies of the images in Coze's replies are kept (with api.public_url set), and how
    # many MiB they may take; the oldest go first.
    cache_dir: Path = Path("data/images")
    cache_mb: int = Field(default=512, ge=1)


class LogSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "text" for people, "json" (one object per line) for log collectors.
    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class AlertSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A Discord webhook gets {"content": ...}; any other URL a JSON {kind, severity, message, at,
    # details}. None: no alerts. The URL is a secret (a Discord webhook's holds its token).
    webhook_url: SecretStr | None = None
    # The gateway counts as down (an alert) once it has been away this long.
    gateway_down_seconds: float = Field(default=60.0, gt=0)
    # At most one message per kind (and one `resolved` per kind) in this many minutes.
    min_interval_minutes: float = Field(default=60.0, ge=0)
    # One delivery's time limit; a failed delivery is logged, never retried.
    timeout_seconds: float = Field(default=10.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BRIDGE_", env_nested_delimiter="__", extra="forbid")

    discord: DiscordSettings
    api: ApiSettings = Field(default_factory=ApiSettings)
    completion: CompletionSettings = Field(default_factory=CompletionSettings)
    accounts: AccountSettings = Field(default_factory=AccountSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    instance: InstanceSettings = Field(default_factory=InstanceSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    models: list[ModelSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_model_at_least(self) -> Settings:
        if not self.models and (self.discord.coze_bot_id is None or self.discord.channel_id is None):
            raise ValueError(
                "set discord.coze_bot_id and discord.channel_id, or list the Coze bots in [[models]]"
            )
        return self

    @model_validator(mode="after")
    def _no_open_door(self) -> Settings:
        if not self.accepted_keys() and not self.api.allow_no_auth and not is_loopback(self.api.host):
            raise ValueError(
                f"api.host {self.api.host!r} reaches beyond this machine, and no api.keys are set: "
                "set api.keys, or api.allow_no_auth = true to serve anyone who can connect"
            )
        return self

    @model_validator(mode="after")
    def _admin_keys_apart(self) -> Settings:
        # A key shared with callers would hand every caller the pool's switches.
        callers = {key.get_secret_value() for key in self.accepted_keys()}
        if any(key.get_secret_value() in callers for key in self.api.admin_keys):
            raise ValueError(
                "api.admin_keys: an admin key may not also be a caller's key (api.keys or a model's api_keys)"
            )
        return self

    @property
    def model_routes(self) -> list[ModelSettings]:
        """The Coze bots served, in order; without [[models]], the one in [discord] as `coze`."""
        if self.models:
            return list(self.models)
        bot_id, channel_id = self.discord.coze_bot_id, self.discord.channel_id
        assert bot_id is not None  # the validator above guarantees both
        assert channel_id is not None
        return [ModelSettings(name=DEFAULT_MODEL, coze_bot_id=bot_id, channel_id=channel_id)]

    def accepted_keys(self) -> list[SecretStr]:
        """Every API key: the general ones and those of models restricted to their own keys."""
        return [*self.api.keys, *(key for model in self.models for key in model.api_keys)]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs; the environment must win over them.
        return _GivenEnvironment(settings_cls, _building_from.get(os.environ)), init_settings


class _GivenEnvironment(EnvSettingsSource):
    """BRIDGE_* variables from a given mapping instead of os.environ, parsed as pydantic-settings
    parses the environment (tables and lists as JSON)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._given = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._given, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class ConfigError(Exception):
    """A bad configuration, described in one line that names the key and never its value."""


def load_settings(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = None,
    bot_config: Path = BOT_CONFIG,
    **overrides: Any,
) -> Settings:
    """Settings from, lowest first: coze-discord-proxy's names, the TOML file, `overrides`, BRIDGE_*
    variables (those of `environ`, default the process's, over those of `env_file`)."""
    environ = effective_environ(os.environ if environ is None else environ, env_file)
    try:
        data = proxy_settings(environ, bot_config)
    except CompatError as exc:
        raise ConfigError(f"config error: {exc}") from None
    if path is not None:
        try:
            _merge(data, tomllib.loads(path.read_text(encoding="utf-8")))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    _merge(data, overrides)
    building = _building_from.set(environ)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:
        # pydantic-settings reads a BRIDGE_* list or table as JSON; its message names no value.
        raise ConfigError(
            f"config error: {exc}: lists and tables in BRIDGE_* variables are JSON, "
            """e.g. BRIDGE_DISCORD__USER_TOKENS='["token-a", "token-b"]'"""
        ) from None
    finally:
        _building_from.reset(building)


def effective_environ(environ: Mapping[str, str], env_file: Path | None) -> Mapping[str, str]:
    """`environ` over the variables of `env_file` (systemd's EnvironmentFile syntax, read anew
    on every load so a reload sees its changes)."""
    if env_file is None:
        return environ
    try:
        with env_file.open(encoding="utf-8") as stream:
            listed = dotenv_values(stream=stream, interpolate=False)
    except OSError as exc:
        raise ConfigError(f"cannot read env file {env_file}: {exc.strerror}") from None
    return {name: value for name, value in listed.items() if value is not None} | dict(environ)


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _describe(exc: ValidationError) -> str:
    # pydantic's own str() repeats the input value, which may be a token: build the line ourselves.
    first = exc.errors(include_input=False, include_url=False)[0]
    key = ".".join(str(part) for part in first["loc"]) or "(root)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"config error: {key}: {first['msg']}{more}"
