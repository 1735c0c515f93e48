"""Images in Coze's replies: where they are in a message payload, and how they join the text."""

from __future__ import annotations

from collections.abc import Iterable

from bot.payloads import MessagePayload


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


def with_image_links(text: str, urls: Iterable[str]) -> str:
    """The answer with each image not already in its text appended as a markdown image link."""
    seen: set[str] = set()
    links: list[str] = []
    for url in urls:
        if url in seen or url in text:
            continue
        seen.add(url)
        links.append(f"![image]({url})")
    if not links:
        return text
    return (text.rstrip() + "\n\n" if text.strip() else "") + "\n".join(links)
