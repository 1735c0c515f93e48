"""Log output (text or JSON lines) and the request id every line about a request carries."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

# The id of the request being handled; tasks started while handling it inherit it.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
JSON_FIELDS = ["asctime", "levelname", "name", "message"]


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on each record as `request_id` (none outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        return True


class _BridgeHandler(logging.StreamHandler[TextIO]):
    """The handler `configure` installs (and replaces when called again)."""


def configure(level: str, format: Literal["text", "json"]) -> None:
    """Send every logger's records at `level` and above to stderr, as text or JSON lines."""
    handler = _BridgeHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter(format))
    root = logging.getLogger()
    # Configured twice (settings may change the level), the process still writes each line once.
    for old in [h for h in root.handlers if isinstance(h, _BridgeHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def formatter(format: Literal["text", "json"]) -> logging.Formatter:
    """The formatter for `log.format`."""
    if format == "json":
        # Fields passed with `extra=` (and request_id) become fields of the object.
        return JsonFormatter(JSON_FIELDS, rename_fields={"asctime": "time", "levelname": "level"})
    # Lines logged outside any request show "[-]" where a request's id would be.
    return logging.Formatter(TEXT_FORMAT, defaults={"request_id": "-"})
