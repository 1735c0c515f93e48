"""A member's effective permissions in a channel, computed as Discord does (for the doctor).

discord.py's `Permissions` does the bit arithmetic; this module only applies Discord's order:
@everyone, then the member's roles, administrator, then the channel's overwrites for @everyone,
the member's roles together, and the member.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import discord

# discord.py's flag name -> the name Discord's UI shows (what an operator looks for).
UI_NAMES = {
    "view_channel": "View Channel",
    "read_message_history": "Read Message History",
    "send_messages": "Send Messages",
    "send_messages_in_threads": "Send Messages in Threads",
    "create_public_threads": "Create Public Threads",
    "create_private_threads": "Create Private Threads",
    "manage_threads": "Manage Threads",
}


@dataclass(frozen=True, slots=True)
class Overwrite:
    id: int
    type: int  # 0: a role (the guild id is @everyone), 1: a member
    allow: int
    deny: int


@dataclass(frozen=True, slots=True)
class GuildView:
    """What permissions depend on in a guild: its id (@everyone's role id), owner and roles."""

    id: int
    owner_id: int
    roles: Mapping[int, int]  # role id -> permission bits

    @classmethod
    def from_payloads(cls, guild: Mapping[str, Any], roles: Sequence[Mapping[str, Any]]) -> GuildView:
        return cls(
            int(guild["id"]),
            int(guild.get("owner_id") or 0),
            {int(role["id"]): int(role["permissions"]) for role in roles},
        )


def overwrites(channel: Mapping[str, Any]) -> list[Overwrite]:
    return [
        Overwrite(int(o["id"]), int(o["type"]), int(o["allow"]), int(o["deny"]))
        for o in channel.get("permission_overwrites") or []
    ]


def effective(
    guild: GuildView, member_id: int, member_roles: Sequence[int], channel: Sequence[Overwrite]
) -> discord.Permissions:
    if member_id == guild.owner_id:
        return discord.Permissions.all()
    base = discord.Permissions(guild.roles.get(guild.id, 0))
    for role_id in member_roles:
        base.value |= guild.roles.get(role_id, 0)
    if base.administrator:
        return discord.Permissions.all()  # administrators pass every overwrite
    for overwrite in _relevant(guild, member_id, member_roles, channel):
        base.handle_overwrite(overwrite.allow, overwrite.deny)
    if not base.view_channel:
        return discord.Permissions.none()  # Discord grants nothing in a channel one cannot see
    return base


def missing(perms: discord.Permissions, names: Sequence[str]) -> list[str]:
    """The flags among `names` (discord.py's names) that `perms` lacks."""
    return [name for name in names if not getattr(perms, name)]


def denied_by(
    guild: GuildView, member_id: int, member_roles: Sequence[int], channel: Sequence[Overwrite], name: str
) -> str:
    """Where a missing permission comes from, said as the operator would go and fix it."""
    bit = discord.Permissions(**{name: True}).value
    for overwrite in channel:
        applies = (
            overwrite.id == member_id if overwrite.type == 1 else overwrite.id in (guild.id, *member_roles)
        )
        if applies and overwrite.deny & bit:
            if overwrite.type == 1:
                return "denied by the channel's permission overwrite for the member"
            if overwrite.id == guild.id:
                return "denied by the channel's permission overwrite for @everyone"
            return f"denied by the channel's permission overwrite for role {overwrite.id}"
    return "no role of the member grants it"


def _relevant(
    guild: GuildView, member_id: int, member_roles: Sequence[int], channel: Sequence[Overwrite]
) -> list[Overwrite]:
    """The overwrites that apply to the member, in the order Discord applies them; the member's
    role overwrites are merged into one (a role's allow beats another role's deny)."""
    everyone = [o for o in channel if o.type == 0 and o.id == guild.id]
    roles = [o for o in channel if o.type == 0 and o.id in member_roles and o.id != guild.id]
    merged = Overwrite(0, 0, 0, 0)
    for overwrite in roles:
        merged = Overwrite(0, 0, merged.allow | overwrite.allow, merged.deny | overwrite.deny)
    own = [o for o in channel if o.type == 1 and o.id == member_id]
    return [*everyone, *([merged] if roles else []), *own]
