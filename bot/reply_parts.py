"""What posting a prompt and following Coze's reply take: shared by answers and limit probes."""

from __future__ import annotations

from dataclasses import dataclass

from bot.config import CompletionSettings
from bot.gateway_state import GatewayState
from bot.interface import ImageKeeper
from bot.ledger import Ledger
from bot.posting import Posting
from bot.router import ReplyRouter
from bot.seams import Clock
from bot.stopping import Stopping


@dataclass(frozen=True, slots=True)
class ReplyParts:
    completion: CompletionSettings
    gateway: GatewayState
    router: ReplyRouter
    posting: Posting
    ledger: Ledger
    clock: Clock
    stopping: Stopping
    # Keeps the images of replies beyond Discord's links (None: their Discord URLs are passed on).
    images: ImageKeeper | None = None
