"""The JSON objects Discord sends, shaped as discord.py 2.x parses them (ids as strings)."""

from __future__ import annotations

from typing import Any

from simdiscord.world import Account, Channel, Message, World, snowflake_time

ALL_PERMISSIONS = str((1 << 50) - 1)
# Application flags: GATEWAY_MESSAGE_CONTENT_LIMITED means the portal's toggle is on for an
# unverified bot, which is what every self-hosted bridge's listener is.
MESSAGE_CONTENT_LIMITED_FLAG = 1 << 19
MESSAGE_TYPE_DEFAULT = 0
MESSAGE_TYPE_REPLY = 19


def user(account: Account) -> dict[str, Any]:
    return {
        "id": str(account.id),
        "username": account.name,
        "discriminator": "0",
        "global_name": account.name,
        "avatar": None,
        "bot": account.bot,
        "public_flags": 0,
    }


def member(world: World, account: Account, *, with_user: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "roles": [],
        "nick": None,
        "joined_at": snowflake_time(world.guild_id),
        "deaf": False,
        "mute": False,
        "flags": 0,
    }
    if with_user:
        data["user"] = user(account)
    return data


def channel(world: World, ch: Channel) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(ch.id),
        "guild_id": str(world.guild_id),
        "name": ch.name,
        "type": ch.type,
        "nsfw": False,
        "rate_limit_per_user": 0,
        "last_message_id": str(ch.message_ids[-1]) if ch.message_ids else None,
        "flags": 0,
    }
    if ch.is_thread:
        count = len(ch.message_ids)
        data |= {
            "parent_id": str(ch.parent_id),
            "owner_id": str(ch.owner_id),
            "message_count": count,
            "total_message_sent": count,
            "member_count": 1,
            "thread_metadata": {
                "archived": ch.archived,
                "locked": ch.locked,
                "auto_archive_duration": ch.auto_archive_duration,
                "archive_timestamp": snowflake_time(ch.id),
                "create_timestamp": snowflake_time(ch.id),
            },
        }
    else:
        data |= {"position": 0, "permission_overwrites": [], "topic": None, "parent_id": None}
    return data


def everyone_role(world: World) -> dict[str, Any]:
    # The @everyone role shares the guild's id; discord.py's permission checks start from it.
    return {
        "id": str(world.guild_id),
        "name": "@everyone",
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": 0,
        "permissions": ALL_PERMISSIONS,
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }


def guild(world: World) -> dict[str, Any]:
    """The full guild of GUILD_CREATE, with its members, channels and active threads."""
    accounts = list(world.accounts.values())
    channels = world.channels.values()
    return {
        "id": str(world.guild_id),
        "name": "Simulated Guild",
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": str(world.human.id),
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "premium_progress_bar_enabled": False,
        "preferred_locale": "en-US",
        "system_channel_id": None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "safety_alerts_channel_id": None,
        "vanity_url_code": None,
        "features": [],
        "roles": [everyone_role(world)],
        "emojis": [],
        "stickers": [],
        "joined_at": snowflake_time(world.guild_id),
        "large": False,
        "unavailable": False,
        "member_count": len(accounts),
        "members": [member(world, account) for account in accounts],
        "channels": [channel(world, ch) for ch in channels if not ch.is_thread],
        "threads": [channel(world, ch) for ch in channels if ch.is_thread and not ch.archived],
        "voice_states": [],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
    }


def message(world: World, msg: Message, *, with_content: bool = True, nested: bool = True) -> dict[str, Any]:
    """A full message object; without `with_content` it is blanked as for a bot lacking the intent."""
    data: dict[str, Any] = {
        "id": str(msg.id),
        "channel_id": str(msg.channel_id),
        "guild_id": str(world.guild_id),
        "author": user(msg.author),
        "member": member(world, msg.author, with_user=False),
        "content": msg.content if with_content else "",
        "embeds": msg.embeds if with_content else [],
        "attachments": msg.attachments if with_content else [],
        "components": msg.components if with_content else [],
        "timestamp": msg.timestamp,
        "edited_timestamp": msg.edited_timestamp,
        "tts": False,
        "mention_everyone": False,
        "mentions": [user(account) | {"member": member(world, account, with_user=False)} for account in msg.mentions],
        "mention_roles": [],
        "pinned": False,
        "type": MESSAGE_TYPE_REPLY if msg.reference_id is not None else MESSAGE_TYPE_DEFAULT,
        "flags": 0,
    }
    if msg.reference_id is not None:
        data["message_reference"] = {
            "type": 0,
            "message_id": str(msg.reference_id),
            "channel_id": str(msg.channel_id),
            "guild_id": str(world.guild_id),
        }
        if nested:
            referenced = world.messages.get(msg.reference_id)
            data["referenced_message"] = (
                message(world, referenced, with_content=with_content, nested=False) if referenced else None
            )
    return data


def application(world: World, bot: Account, *, message_content: bool) -> dict[str, Any]:
    """GET /oauth2/applications/@me: discord.py's login reads a full application object."""
    return {
        "id": str(bot.id),
        "name": bot.name,
        "icon": None,
        "description": "",
        "summary": "",
        "rpc_origins": [],
        "bot_public": False,
        "bot_require_code_grant": False,
        "verify_key": "0" * 64,
        "flags": MESSAGE_CONTENT_LIMITED_FLAG if message_content else 0,
        "owner": user(world.human),
        "team": None,
        "tags": [],
        "redirect_uris": [],
        "interactions_endpoint_url": None,
        "bot": user(bot),
    }
