"""The parts of Discord's message payloads the bridge reads, and what it reads from them.

Coze's messages are parsed here, straight from the gateway payload (the listener never builds
discord.py objects for them), into `CozeMessage`s for the router.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from bot.detector import ReplySnapshot


class UserPayload(TypedDict):
    id: str


class ReferencePayload(TypedDict, total=False):
    message_id: str
    channel_id: str


class ComponentPayload(TypedDict, total=False):
    type: int
    label: str
    components: list[ComponentPayload]


class MediaPayload(TypedDict, total=False):
    url: str


class EmbedPayload(TypedDict, total=False):
    type: str
    image: MediaPayload
    thumbnail: MediaPayload


class AttachmentPayload(TypedDict, total=False):
    id: str
    filename: str
    url: str
    content_type: str
    size: int


class MessagePayload(TypedDict, total=False):
    id: str
    channel_id: str
    author: UserPayload
    content: str
    components: list[ComponentPayload]
    message_reference: ReferencePayload
    embeds: list[EmbedPayload]
    attachments: list[AttachmentPayload]


def button_labels(payload: MessagePayload) -> tuple[str, ...] | None:
    """The labels of the message's buttons, or None when it has no components yet.

    Coze adds its row of follow-up suggestion buttons when it has finished, so components
    appearing at all is the end marker, even when no button has a label.
    """
    rows = payload.get("components")
    if not rows:
        return None
    labels: list[str] = []
    for row in rows:
        for child in row.get("components", [row]):
            if label := child.get("label"):
                labels.append(label)
    return tuple(labels)


def image_urls(payload: MessagePayload) -> tuple[str, ...]:
    """Image URLs of a message: embeds' images (and thumbnails), then image attachments."""
    urls: list[str] = []
    for embed in payload.get("embeds", []):
        # A thumbnail is only a smaller copy: it counts when there is no image.
        media = embed.get("image") or embed.get("thumbnail") or {}
        if url := media.get("url"):
            urls.append(url)
    for attachment in payload.get("attachments", []):
        kind = attachment.get("content_type", "")
        if (kind.startswith("image/") or kind == "") and (url := attachment.get("url")):
            urls.append(url)
    return tuple(urls)


def is_blank(payload: MessagePayload) -> bool:
    """No text, components or embeds: what a bot without the Message Content intent sees."""
    return not (payload.get("content") or payload.get("components") or payload.get("embeds"))


@dataclass(frozen=True, slots=True)
class CozeMessage:
    """One create or edit of a message by the Coze bot, with where it belongs."""

    channel_id: int
    reference_id: int | None
    snapshot: ReplySnapshot


def coze_message(payload: MessagePayload) -> CozeMessage:
    reference = payload.get("message_reference", {}).get("message_id")
    snapshot = ReplySnapshot(
        message_id=int(payload["id"]),
        content=payload.get("content", ""),
        buttons=button_labels(payload),
        images=image_urls(payload),
    )
    return CozeMessage(
        channel_id=int(payload["channel_id"]),
        reference_id=int(reference) if reference else None,
        snapshot=snapshot,
    )
