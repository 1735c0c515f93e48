"""Settings sections the Discord side reads (composed into the app's settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

DISCORD_API_BASE = "https://discord.com/api/v10"
# Until several Coze bots can be configured, the one bot is served under this model id.
DEFAULT_MODEL = "coze"


class DiscordSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bot_token: SecretStr
    guild_id: int
    coze_bot_id: int
    channel_id: int
    user_tokens: list[SecretStr] = Field(default_factory=list)
    api_base: str = DISCORD_API_BASE


class CompletionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quiet_seconds: float = Field(default=4.0, gt=0)
    first_reply_timeout: float = Field(default=60.0, gt=0)
    max_reply_seconds: float = Field(default=300.0, gt=0)
    # "There are too many users now": the prompt is posted again after this, then twice as long.
    busy_backoff_seconds: float = Field(default=2.0, ge=0)
