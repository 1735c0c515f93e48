"""The parts of Discord's message payloads the bridge reads."""

from __future__ import annotations

from typing import TypedDict


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
