"""The layout is the architecture: who may import whom, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The reply core: it reaches Discord only through `bot.seams`, so it runs without discord.py.
CORE = [
    "answer",
    "backend",
    "conversations",
    "follow",
    "ledger",
    "posting",
    "probe",
    "reply_parts",
    "router",
    "detector",
    "token_pool",
]
TRANSPORT = {"discord", "aiohttp", "bot.listener", "bot.gateway", "bot.connect", "bot.rest"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "bridge_api").glob("*.py")), ids=lambda p: p.name)
def test_the_api_reaches_bot_only_through_the_port(path: Path) -> None:
    reached = {name for name in imports(path) if name == "bot" or name.startswith("bot.")}
    # bot.doctor: the setup doctor checks Discord itself, a second port beside the backend.
    # bot.proxy: the outbound proxy connector, shared by Discord's connections and image fetches;
    # bot.tasks: the one place background tasks are started (alert deliveries too).
    # bot.status: the port's reports (what the backend says of itself), beside bot.interface.
    port = {"bot.interface", "bot.status", "bot.config"}
    assert reached <= port | {"bot.doctor", "bot.proxy", "bot.tasks"}


@pytest.mark.parametrize("module", CORE)
def test_the_reply_core_imports_no_transport(module: str) -> None:
    reached = imports(ROOT / "bot" / f"{module}.py")
    # `bot.rest` lends the core only its types (a credential, an error, a payload shape).
    allowed_from_rest = module in ("posting", "backend")
    assert not {
        name
        for name in reached
        if name.split(".")[0] in TRANSPORT
        or (name in TRANSPORT and not (name == "bot.rest" and allowed_from_rest))
    }
