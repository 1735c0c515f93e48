"""One answer out of several Coze replies: "continue" after a cut-off, stitched (pure).

Coze caps a reply at 2000 characters and ends a cut-off answer with an ellipsis, waiting for
"continue". Its continuation often repeats the last words before the cut, so the overlap is
dropped. The ellipsis of a part that will be continued is never shown, even while streaming.
"""

from __future__ import annotations

import re

ELLIPSIS = re.compile(r"(?:\.{3,}|\u2026)\s*$")
TRAILING_DOTS = re.compile(r"[.\u2026\s]*$")
# How far back into the previous part a repeated start is looked for, and the least overlap
# that counts (shorter ones are coincidences such as "the").
OVERLAP_WINDOW = 400
MIN_OVERLAP = 8
CONTINUE_PROMPT = "continue"


def is_cut_off(text: str) -> bool:
    return bool(ELLIPSIS.search(text))


def overlap(previous: str, part: str, *, final: bool) -> int | None:
    """How many leading characters of `part` repeat the end of `previous`; None: not known yet.

    While all of `part` so far could still be the start of a repeat, the answer waits.
    """
    tail = previous[-OVERLAP_WINDOW:]
    if not final and part and len(part) < len(tail) and part in tail:
        return None
    for size in range(min(len(part), len(tail)), MIN_OVERLAP - 1, -1):
        if tail.endswith(part[:size]):
            return size
    return 0


def join(previous: str, part: str) -> str:
    if not previous or not part or previous[-1].isspace() or part[0].isspace():
        return previous + part
    # A cut between words or sentences lost its space; punctuation attaches to what came before.
    return previous + ("" if part[0] in ",.;:!?)]}" else " ") + part


class Transcript:
    """The text shown so far across parts; `shown(part)` gives what the client may see."""

    def __init__(self) -> None:
        self.previous = ""  # the finished parts, stitched, without their ellipses
        self._parts = 0
        self._cut: int | None = None
        self._sent = 0

    def delta(self, shown: str) -> str:
        """What of `shown` the client has not seen yet (text is never taken back)."""
        if len(shown) <= self._sent:
            return ""
        out, self._sent = shown[self._sent :], len(shown)
        return out

    @property
    def parts(self) -> int:
        return self._parts

    def shown(self, part: str, *, final: bool, hide_ellipsis: bool) -> str:
        """The whole answer as far as it may be shown, given the current part's text so far."""
        if hide_ellipsis and not final:
            part = TRAILING_DOTS.sub("", part)
        elif hide_ellipsis:
            part = ELLIPSIS.sub("", part).rstrip()
        if not self._parts:
            return part
        if not part and not final:
            return self.previous
        if self._cut is None:
            self._cut = overlap(self.previous, part, final=final)
            if self._cut is None:
                return self.previous
        return join(self.previous, part[self._cut :])

    def next_part(self, finished_part: str) -> None:
        """The current part ended cut off; what follows continues it."""
        self.previous = self.shown(finished_part, final=True, hide_ellipsis=True)
        self._parts += 1
        self._cut = None
