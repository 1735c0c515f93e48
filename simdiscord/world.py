"""The simulated Discord's state: accounts, one guild, channels, threads and messages."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

DISCORD_EPOCH_MS = 1_420_070_400_000
# How long Discord's signed attachment and CDN links work: about a day.
LINK_SECONDS = 24 * 3600


class Snowflakes:
    """Discord-shaped ids: milliseconds since Discord's epoch, then a counter; always growing."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(candidate, self._last + 1)
        return self._last


@dataclass
class Account:
    id: int
    name: str
    token: str
    bot: bool


# Every permission but ADMINISTRATOR (1 << 3), which would make channel overwrites moot.
EVERYONE_PERMISSIONS = ((1 << 50) - 1) & ~(1 << 3)
# The application flag Discord sets once the Message Content intent is switched on, and the
# one a verified application has instead (either lets a session ask for the intent).
GATEWAY_MESSAGE_CONTENT = 1 << 18
GATEWAY_MESSAGE_CONTENT_LIMITED = 1 << 19


@dataclass
class Role:
    id: int
    name: str
    permissions: int
    position: int = 0


@dataclass
class Overwrite:
    """A channel permission overwrite: for a role (type 0) or a member (type 1)."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0


@dataclass
class Channel:
    id: int
    name: str
    type: int  # 0 text channel, 11 public thread, 12 private thread
    parent_id: int | None = None
    owner_id: int | None = None
    archived: bool = False
    message_count: int = 0
    # A private thread's members: only they (and moderators) see it and post in it.
    members: set[int] | None = None
    overwrites: list[Overwrite] = field(default_factory=list)

    @property
    def is_thread(self) -> bool:
        return self.type in (11, 12)

    def admits(self, account_id: int) -> bool:
        return self.members is None or account_id in self.members


@dataclass
class Attachment:
    id: int
    filename: str
    content_type: str
    data: bytes = field(repr=False)
    # When its link was signed and until when it works (unix seconds on the CDN's clock).
    issued: int = 0
    expires: int = 0

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Message:
    id: int
    channel_id: int
    author: Account
    content: str
    mentions: list[Account] = field(default_factory=list)
    reference_id: int | None = None
    components: list[dict[str, Any]] = field(default_factory=list)
    edited: bool = False
    attachments: list[Attachment] = field(default_factory=list)
    embed_images: list[str] = field(default_factory=list)  # URLs of image embeds

    @property
    def author_id(self) -> int:
        return self.author.id


@dataclass(frozen=True, slots=True)
class PromptPost:
    """A user account's message that mentions a Coze bot, when the simulation took it in."""

    author_id: int
    message_id: int
    channel_id: int
    at: float  # on the simulation's clock (monotonic seconds)


class World:
    """Everything the REST API, the gateway and the Coze bot share, with change notification."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.ids = Snowflakes()
        # Where attachments are served (the simulation's own HTTP address, set on start).
        self.cdn_base = ""
        self.guild_id = self.ids.next()
        self.accounts: dict[int, Account] = {}
        self._by_token: dict[str, Account] = {}
        # The guild's members (every account, unless a test removes one) and their roles.
        self.members: set[int] = set()
        self.member_roles: dict[int, list[int]] = {}
        # The @everyone role's id is the guild's own.
        self.roles: dict[int, Role] = {self.guild_id: Role(self.guild_id, "@everyone", EVERYONE_PERMISSIONS)}
        # The listener's application flags, as its Developer Portal switches set them.
        self.application_flags = GATEWAY_MESSAGE_CONTENT
        # Coze's messages go out without content even to sessions that asked for it: models an
        # intent revoked while connected, or a proxy or relay that strips it.
        self.withhold_content = False
        self.listener = self.add_account("bridge-listener", bot=True)
        self.coze = self.add_account("Coze Bot", bot=True)
        self.coze_bots = [self.coze]
        self.users = [self.add_account(f"prompter{n}", bot=False) for n in range(1, 4)]
        self.human = self.add_account("someone", bot=False)
        self.channels: dict[int, Channel] = {}
        self.text_channel = self.add_channel("coze-chat", type=0)
        self.other_channel = self.add_channel("general", type=0)
        self.messages: dict[int, Message] = {}
        # Prompts whose Coze reply has gone out on the gateway.
        self.answered: set[int] = set()
        # (author id, nonce) -> the message it created, for posts with enforce_nonce.
        self.nonces: dict[tuple[int, str], int] = {}
        self.attachments: dict[int, Attachment] = {}
        # Attachment links are signed (`ex`, `is`, `hm`) and answer 404 once `ex` has passed on
        # the CDN's clock: tests set a short life, or move the clock on.
        self.link_seconds = LINK_SECONDS
        self.cdn_clock: Callable[[], float] = time.time
        self._link_key = secrets.token_bytes(32)
        # Discord's answers to a user token that cannot post: 401, or 403 code 40002.
        self.revoked: set[int] = set()
        self.unverified: set[int] = set()
        # Every prompt a user account posted, in order (pacing is measured on these).
        self.prompt_posts: list[PromptPost] = []
        self._changed = asyncio.Event()

    def add_account(self, name: str, *, bot: bool) -> Account:
        account = Account(
            self.ids.next(), name, f"sim-{'bot' if bot else 'user'}.{secrets.token_urlsafe(18)}", bot
        )
        self.accounts[account.id] = account
        self._by_token[account.token] = account
        self.members.add(account.id)
        return account

    def add_channel(
        self, name: str, *, type: int, parent_id: int | None = None, owner_id: int | None = None
    ) -> Channel:
        channel = Channel(self.ids.next(), name, type, parent_id=parent_id, owner_id=owner_id)
        self.channels[channel.id] = channel
        return channel

    def add_coze_bot(self, name: str) -> Account:
        account = self.add_account(name, bot=True)
        self.coze_bots.append(account)
        return account

    def add_role(self, name: str, permissions: int) -> Role:
        role = Role(self.ids.next(), name, permissions, position=len(self.roles))
        self.roles[role.id] = role
        return role

    def add_attachment(self, filename: str, content_type: str, data: bytes) -> Attachment:
        issued = int(self.cdn_clock())
        attachment = Attachment(
            self.ids.next(), filename, content_type, data, issued, issued + self.link_seconds
        )
        self.attachments[attachment.id] = attachment
        return attachment

    def signed(self, path: str, issued: int, expires: int) -> str:
        """The query Discord signs a CDN path with: expiry and issue time in hex, and the HMAC."""
        return f"ex={expires:x}&is={issued:x}&hm={self._mac(path, expires, issued)}&"

    def link_works(self, path: str, query: Mapping[str, str]) -> bool:
        """Whether a CDN link's signature is Discord's own and it has not expired."""
        try:
            expires, issued = int(query["ex"], 16), int(query["is"], 16)
        except (KeyError, ValueError):
            return False
        given = query.get("hm", "").encode("utf-8", "surrogateescape")
        genuine = hmac.compare_digest(given, self._mac(path, expires, issued).encode())
        return genuine and self.cdn_clock() < expires

    def _mac(self, path: str, expires: int, issued: int) -> str:
        message = f"{path}|{expires:x}|{issued:x}".encode()
        return hmac.new(self._link_key, message, hashlib.sha256).hexdigest()

    def by_token(self, token: str) -> Account:
        return self._by_token[token]

    def authenticate(self, authorization: str) -> Account | None:
        # Bot accounts send "Bot <token>"; user accounts send the bare token.
        if authorization.startswith("Bot "):
            account = self._by_token.get(authorization[4:])
            return account if account and account.bot else None
        account = self._by_token.get(authorization)
        return account if account and not account.bot and account.id not in self.revoked else None

    def reinstate(self, account_id: int) -> None:
        """A revoked or unverified account works again (its owner fixed it)."""
        self.revoked.discard(account_id)
        self.unverified.discard(account_id)

    def add_message(self, message: Message) -> None:
        self.messages[message.id] = message
        self.channels[message.channel_id].message_count += 1
        if not message.author.bot and any(bot in message.mentions for bot in self.coze_bots):
            self.prompt_posts.append(
                PromptPost(message.author.id, message.id, message.channel_id, self.clock())
            )
        self.changed()

    def changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds, re-checking on every change."""
        while not predicate():
            await self._changed.wait()
