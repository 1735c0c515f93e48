"""The chat completions request body, as OpenAI clients send it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from bot.interface import ChatTurn, PromptRequest
from bridge_api.errors import APIError


def _lenient_bool(value: Any) -> Any:
    # Some clients send "stream": "true"; several proxies read the string "false" as true.
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool) and value is not None:
        raise ValueError("must be true or false")
    return value


LenientBool = Annotated[bool, BeforeValidator(_lenient_bool)]


class _Lenient(BaseModel):
    # NextChat always sends temperature, top_p and penalties; we ignore what we cannot honour.
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: Any = None


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Part] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(part.text for part in self.content if isinstance(part, TextPart))


class StreamOptions(_Lenient):
    include_usage: LenientBool = False


class ChatRequest(_Lenient):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: LenientBool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def prompt(self, request_id: str) -> PromptRequest:
        for index, message in enumerate(self.messages):
            if not isinstance(message.content, list):
                continue
            if any(isinstance(part, ImagePart) for part in message.content):
                raise APIError(
                    400,
                    "image_url parts are not supported yet; send text only.",
                    code="unsupported_content",
                    param=f"messages[{index}].content",
                )
        turns = tuple(ChatTurn(m.role, m.text()) for m in self.messages)
        return PromptRequest(request_id=request_id, model=self.model, turns=turns)


def parse_chat_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_body")
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        param = _param(first["loc"])
        raise APIError(
            400, f"Invalid '{param}': {first['msg']}.", code="invalid_value", param=param
        ) from None


def _param(loc: tuple[int | str, ...]) -> str:
    # Drop pydantic's union branch names ("str", "list[...]", "text") from the path.
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "text", "image_url") or "[" in part:
            continue
        else:
            out += f".{part}" if out else part
    return out or "body"
