"""Image checks and Coze's images in payloads (pure parts)."""

from __future__ import annotations

import base64

import pytest

from bot.answer import with_image_links
from bot.detector import CompletionDetector, ReplySnapshot
from bot.payloads import MessagePayload, image_urls
from bridge_api.image_input import ImageProblem, decode_data_url, sniff
from simdiscord.png import solid_png


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (solid_png(1, 1, (0, 0, 0)), "image/png"),
        (b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        (b"GIF87a...", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"<svg xmlns=...>", None),
        (b"", None),
    ],
)
def test_sniff_by_magic_bytes(data: bytes, kind: str | None) -> None:
    assert sniff(data) == kind


def test_data_urls() -> None:
    png = solid_png(2, 2, (9, 9, 9))
    assert decode_data_url("data:image/png;base64," + base64.b64encode(png).decode(), 1000) == png
    with pytest.raises(ImageProblem, match="base64-encoded"):
        decode_data_url("data:image/png,rawbytes", 1000)
    with pytest.raises(ImageProblem, match="larger than 10 bytes"):
        decode_data_url("data:image/png;base64," + "A" * 400, 10)


def test_image_urls_from_embeds_and_attachments() -> None:
    payload: MessagePayload = {
        "embeds": [
            {
                "type": "rich",
                "image": {"url": "https://cdn/a.png"},
                "thumbnail": {"url": "https://cdn/a-small.png"},
            },
            {"type": "rich", "thumbnail": {"url": "https://cdn/b.png"}},
            {"type": "link"},
        ],
        "attachments": [
            {"url": "https://cdn/c.webp", "content_type": "image/webp"},
            {"url": "https://cdn/notes.txt", "content_type": "text/plain"},
        ],
    }
    assert image_urls(payload) == ("https://cdn/a.png", "https://cdn/b.png", "https://cdn/c.webp")


def test_image_links_are_appended_once_and_not_when_already_in_the_text() -> None:
    urls = ["https://cdn/a.png", "https://cdn/b.png", "https://cdn/a.png"]
    text = with_image_links("See ![x](https://cdn/b.png)", urls)
    assert text == "See ![x](https://cdn/b.png)\n\n![image](https://cdn/a.png)"
    assert with_image_links("", ["https://cdn/a.png"]) == "![image](https://cdn/a.png)"
    assert with_image_links("plain", []) == "plain"


def test_the_detector_collects_images_across_edits_once() -> None:
    detector = CompletionDetector(started_at=0, quiet_seconds=1, first_reply_timeout=5, max_reply_seconds=60)
    detector.feed(ReplySnapshot(1, "Here", images=("u1",)), 0.1)
    detector.feed(ReplySnapshot(1, "Here it is", images=("u1",)), 0.2)
    steps = detector.feed(ReplySnapshot(1, "Here it is", buttons=(), images=("u1", "u2")), 0.3)
    assert steps[-1].images == ("u1", "u2")  # type: ignore[union-attr]


def test_an_image_only_reply_ends_on_the_quiet_period() -> None:
    detector = CompletionDetector(started_at=0, quiet_seconds=1, first_reply_timeout=5, max_reply_seconds=60)
    detector.feed(ReplySnapshot(1, "", images=("u1",)), 0.5)
    assert detector.deadline == 1.5
    (finished,) = detector.tick(1.5)
    assert finished.images == ("u1",)  # type: ignore[union-attr]
