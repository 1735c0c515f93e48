"""coze-discord-proxy's settings, read as aliases so its users can switch without rewriting.

Its environment variables and its `data/config/bot_config.json` map onto our settings with
the lowest precedence: our TOML file and `BRIDGE_*` variables win wherever both are set.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bot.config import DEFAULT_MODEL

# Where coze-discord-proxy's docker setup keeps it, relative to the working directory.
BOT_CONFIG = Path("data/config/bot_config.json")

# Their variable -> (our section, our key).
PLAIN = {
    "BOT_TOKEN": ("discord", "bot_token"),
    "GUILD_ID": ("discord", "guild_id"),
    "COZE_BOT_ID": ("discord", "coze_bot_id"),
    "CHANNEL_ID": ("discord", "channel_id"),
    # Their non-stream timeout bounds the whole reply; their stream timeout bounds the wait
    # for the stream to show anything.
    "REQUEST_OUT_TIME": ("completion", "max_reply_seconds"),
    "STREAM_REQUEST_OUT_TIME": ("completion", "first_reply_timeout"),
}
LISTS = {
    "USER_AUTHORIZATION": ("discord", "user_tokens"),
    "PROXY_SECRET": ("api", "keys"),
}


class CompatError(ValueError):
    pass


def proxy_settings(environ: Mapping[str, str], bot_config: Path = BOT_CONFIG) -> dict[str, Any]:
    """Our settings, as far as coze-discord-proxy's variables and bot_config.json give them."""
    out: dict[str, dict[str, Any]] = {}
    for name, (section, key) in PLAIN.items():
        if value := environ.get(name, "").strip():
            out.setdefault(section, {})[key] = value
    for name, (section, key) in LISTS.items():
        if items := [item.strip() for item in environ.get(name, "").split(",") if item.strip()]:
            out.setdefault(section, {})[key] = items
    models = _bot_config(bot_config)
    if models:
        discord = out.get("discord", {})
        if "coze_bot_id" in discord and "channel_id" in discord:
            # Their COZE_BOT_ID/CHANNEL_ID stay the bot for keys no entry names.
            models.append(
                {
                    "name": DEFAULT_MODEL,
                    "coze_bot_id": discord["coze_bot_id"],
                    "channel_id": discord["channel_id"],
                }
            )
    result: dict[str, Any] = dict(out)
    if models:
        result["models"] = models
    if result:
        # coze-discord-proxy answers whatever model name a client asks for.
        result.setdefault("api", {})["unknown_model"] = "first"
    return result


def _bot_config(path: Path) -> list[dict[str, Any]]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CompatError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CompatError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise CompatError(f"{path} must hold a JSON list of bots")
    models: list[dict[str, Any]] = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or "cozeBotId" not in entry or "channelId" not in entry:
            raise CompatError(f"{path}: entry {number} needs cozeBotId and channelId")
        names = entry.get("model") or [DEFAULT_MODEL]
        secret = str(entry.get("proxySecret") or "").strip()
        for name in [names] if isinstance(names, str) else names:
            models.append(
                {
                    "name": str(name),
                    "coze_bot_id": entry["cozeBotId"],
                    "channel_id": entry["channelId"],
                    "api_keys": [secret] if secret else [],
                }
            )
    return models
