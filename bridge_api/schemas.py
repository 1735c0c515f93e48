"""Request bodies as OpenAI clients send them (chat completions here), and checking one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from bot.interface import ChatTurn, ImageFile, Limits, PromptRequest
from bridge_api.errors import APIError, invalid_body


def _lenient_bool(value: Any) -> Any:
    # Some clients send "stream": "true"; several proxies read the string "false" as true.
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool) and value is not None:
        raise ValueError("must be true or false")
    return value


LenientBool = Annotated[bool, BeforeValidator(_lenient_bool)]


class Lenient(BaseModel):
    # NextChat always sends temperature, top_p and penalties; we ignore what we cannot honour.
    model_config = ConfigDict(extra="ignore")


class TextPart(Lenient):
    type: Literal["text"]
    text: str


class ImageURL(Lenient):
    url: str = Field(min_length=1)


class ImagePart(Lenient):
    type: Literal["image_url"]
    # OpenAI sends {"url": ...}; some clients send the URL as a bare string.
    image_url: ImageURL | str

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Part] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(part.text for part in self.content if isinstance(part, TextPart))


class StreamOptions(Lenient):
    include_usage: LenientBool = False


class ChatRequest(Lenient):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: LenientBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Pins a conversation like the X-Conversation-Id header: gateways such as one-api forward
    # the body but drop headers they do not know.
    conversation_id: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def image_parts(self) -> list[tuple[int, str, str]]:
        """(message index, param, url) of every image part, in order."""
        found: list[tuple[int, str, str]] = []
        for index, message in enumerate(self.messages):
            if isinstance(message.content, list):
                for position, part in enumerate(message.content):
                    if isinstance(part, ImagePart):
                        found.append((index, f"messages[{index}].content[{position}].image_url", part.url))
        return found

    def prompt(
        self,
        request_id: str,
        *,
        route: int,
        conversation: str | None,
        caller: str,
        limits: Limits,
        images: Sequence[tuple[int, ImageFile]] = (),
    ) -> PromptRequest:
        """The request for the backend; `images` are (message index, loaded image)."""
        per_message: dict[int, list[ImageFile]] = {}
        for index, image in images:
            per_message.setdefault(index, []).append(image)
        turns = tuple(
            ChatTurn(m.role, m.text(), tuple(per_message.get(index, ())))
            for index, m in enumerate(self.messages)
        )
        return PromptRequest(
            request_id=request_id,
            model=self.model,
            turns=turns,
            route=route,
            conversation=conversation,
            caller=caller,
            user=self.user,
            limits=limits,
        )


Body = TypeVar("Body", bound=BaseModel)


def parse_body(model_type: type[Body], body: object) -> Body:
    """`body` (parsed JSON) as a `model_type`, or a 400 naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_body")
    try:
        return model_type.model_validate(body)
    except ValidationError as exc:
        raise invalid_body(exc) from None
