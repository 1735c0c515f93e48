"""The JSON objects Discord sends, as discord.py 2.x expects to parse them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from simdiscord.world import DISCORD_EPOCH_MS, Account, Attachment, Channel, Message, Role, World


def timestamp(snowflake: int) -> str:
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


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


def member(world: World, account: Account) -> dict[str, Any]:
    return {
        "user": user(account),
        "roles": [str(role_id) for role_id in world.member_roles.get(account.id, [])],
        "joined_at": timestamp(world.guild_id),
        "deaf": False,
        "mute": False,
        "flags": 0,
    }


def channel(world: World, ch: Channel) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(ch.id),
        "guild_id": str(world.guild_id),
        "name": ch.name,
        "type": ch.type,
        "position": 0,
        "permission_overwrites": [
            {"id": str(o.id), "type": o.type, "allow": str(o.allow), "deny": str(o.deny)}
            for o in ch.overwrites
        ],
        "nsfw": False,
        "rate_limit_per_user": 0,
        "last_message_id": None,
        "flags": 0,
    }
    if ch.is_thread:
        data |= {
            "parent_id": str(ch.parent_id),
            "owner_id": str(ch.owner_id),
            "message_count": ch.message_count,
            "member_count": len(ch.members) if ch.members is not None else 1,
            "total_message_sent": ch.message_count,
            "thread_metadata": {
                "archived": ch.archived,
                "auto_archive_duration": 60,
                "archive_timestamp": timestamp(ch.id),
                "locked": False,
                **({"invitable": False} if ch.members is not None else {}),
            },
        }
    else:
        data |= {"topic": None, "parent_id": None}
    return data


def role(r: Role) -> dict[str, Any]:
    return {
        "id": str(r.id),
        "name": r.name,
        "color": 0,
        "hoist": False,
        "position": r.position,
        "permissions": str(r.permissions),
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }


def partial_guild(world: World) -> dict[str, Any]:
    """A guild as GET /users/@me/guilds lists it."""
    return {
        "id": str(world.guild_id),
        "name": "Simulated Guild",
        "icon": None,
        "owner": False,
        "features": [],
    }


def guild(world: World) -> dict[str, Any]:
    accounts = [account for account in world.accounts.values() if account.id in world.members]
    return {
        "id": str(world.guild_id),
        "name": "Simulated Guild",
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "owner_id": str(world.human.id),
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "roles": [role(r) for r in world.roles.values()],
        "emojis": [],
        "stickers": [],
        "features": [],
        "mfa_level": 0,
        "system_channel_id": None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "vanity_url_code": None,
        "description": None,
        "banner": None,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": "en-US",
        "nsfw_level": 0,
        "premium_progress_bar_enabled": False,
        "joined_at": timestamp(world.guild_id),
        "large": False,
        "unavailable": False,
        "member_count": len(accounts),
        "members": [member(world, account) for account in accounts],
        "channels": [channel(world, ch) for ch in world.channels.values() if ch.type != 11],
        "threads": [channel(world, ch) for ch in world.channels.values() if ch.is_thread and not ch.archived],
        "voice_states": [],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
    }


def message(world: World, msg: Message, *, with_content: bool = True, nested: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(msg.id),
        "channel_id": str(msg.channel_id),
        "guild_id": str(world.guild_id),
        "author": user(msg.author),
        "member": member(world, msg.author) | {"user": None},
        # Without the Message Content intent Discord blanks these for messages not mentioning the bot.
        "content": msg.content if with_content else "",
        "components": msg.components if with_content else [],
        "embeds": [_image_embed(url) for url in msg.embed_images] if with_content else [],
        "attachments": [attachment(world, msg.channel_id, a) for a in msg.attachments]
        if with_content
        else [],
        "timestamp": timestamp(msg.id),
        "edited_timestamp": datetime.now(UTC).isoformat() if msg.edited else None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [user(account) for account in msg.mentions],
        "mention_roles": [],
        "pinned": False,
        "type": 19 if msg.reference_id else 0,
        "flags": 0,
    }
    del data["member"]["user"]
    if msg.reference_id is not None:
        data["message_reference"] = {
            "type": 0,
            "message_id": str(msg.reference_id),
            "channel_id": str(msg.channel_id),
            "guild_id": str(world.guild_id),
        }
        referenced = world.messages.get(msg.reference_id)
        if nested and referenced is not None:
            data["referenced_message"] = message(world, referenced, with_content=with_content, nested=False)
    return data


def attachment_url(world: World, channel_id: int, item: Attachment) -> str:
    """The attachment's signed CDN link, which stops working at `item.expires`."""
    path = f"/attachments/{channel_id}/{item.id}/{item.filename}"
    return f"{world.cdn_base}{path}?{world.signed(path, item.issued, item.expires)}"


def attachment(world: World, channel_id: int, item: Attachment) -> dict[str, Any]:
    url = attachment_url(world, channel_id, item)
    return {
        "id": str(item.id),
        "filename": item.filename,
        "size": item.size,
        "url": url,
        "proxy_url": url,
        "content_type": item.content_type,
    }


def _image_embed(url: str) -> dict[str, Any]:
    return {"type": "rich", "image": {"url": url, "proxy_url": url, "width": 64, "height": 64}}


def application(world: World) -> dict[str, Any]:
    return {
        "id": str(world.listener.id),
        "name": world.listener.name,
        "icon": None,
        "description": "",
        "rpc_origins": [],
        "bot_public": False,
        "bot_require_code_grant": False,
        "verify_key": "0" * 64,
        "flags": world.application_flags,
        "owner": user(world.human),
        "team": None,
        "summary": "",
        "tags": [],
        "bot": user(world.listener),
    }
