"""Application settings: a TOML file, overridden by `BRIDGE_*` environment variables."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bot.config import DEFAULT_MODEL, CompletionSettings, DiscordSettings

MODEL_NAME = DEFAULT_MODEL


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    keys: list[SecretStr] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    # NextChat aborts a stream that shows no bytes for 60 s; Coze can be slower than that to start.
    ping_seconds: float = Field(default=5.0, gt=0)
    # NextChat drops an in-band error frame and shows "empty response": also send it as text.
    stream_errors_as_content: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BRIDGE_", env_nested_delimiter="__", extra="forbid")

    discord: DiscordSettings
    api: ApiSettings = Field(default_factory=ApiSettings)
    completion: CompletionSettings = Field(default_factory=CompletionSettings)

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
        return env_settings, init_settings


class ConfigError(Exception):
    """A bad configuration, described in one line that names the key and never its value."""


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    _merge(data, overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


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
