"""Coze reports trouble as an ordinary reply; this table recognises those texts (pure).

Texts are matched normalised (case, apostrophes, punctuation, whitespace), on the reply's
start or its first line, because Coze rewords them and appends extras (upgrade links).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Trouble(enum.Enum):
    DAILY_LIMIT = "daily_limit"  # the sender's user token is spent for today
    CREATOR_LIMIT = "creator_limit"  # the Coze bot's owner ran out of credits
    BUSY = "busy"  # Coze is overloaded: worth retrying
    UPSTREAM = "upstream"  # Coze failed
    REFUSAL = "refusal"  # an answer, flagged as filtered


KNOWN_TEXTS: tuple[tuple[str, Trouble], ...] = (
    ("You have exceeded the daily limit for sending messages to the bot", Trouble.DAILY_LIMIT),
    ("Hi there! You've used up your credits for today", Trouble.DAILY_LIMIT),
    ("Hi there! You've used up your free chat credits", Trouble.DAILY_LIMIT),
    (
        "The bot's usage is covered by the developer, but due to the developer's message credits being exhausted",
        Trouble.CREATOR_LIMIT,
    ),
    ("There are too many users now", Trouble.BUSY),
    ("Something wrong occurs, please retry", Trouble.UPSTREAM),
    ("Some error occurred. Please try again", Trouble.UPSTREAM),
    ("We've detected unusual traffic from your network", Trouble.UPSTREAM),
    ("I'm sorry, but I can't assist with that", Trouble.REFUSAL),
)

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
_NOT_WORD = re.compile(r"[^a-z0-9 ]+")
_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    text = text.translate(_APOSTROPHES).lower().replace("'", "")
    return _SPACES.sub(" ", _NOT_WORD.sub(" ", text)).strip()


_KEYS = tuple((normalise(text), trouble) for text, trouble in KNOWN_TEXTS)
# Normalising only shrinks text, so a notice shows within this many characters of the start
# (with room for Coze's extra spaces and punctuation); a long answer is not read to its end.
_PREFIX_CHARS = 4 * max(len(text) for text, _ in KNOWN_TEXTS)


def classify(reply: str, *, asked: str = "") -> Trouble | None:
    """The trouble a finished reply reports, or None for an ordinary answer.

    `asked` is what the caller wrote: Coze repeats what it is asked to, so a notice the caller's
    own words contain is an answer, not Coze's trouble. It is normalised only when a notice
    matched, which is rare: a long history costs nothing on an ordinary reply.
    """
    reply = reply[:_PREFIX_CHARS]
    whole = normalise(reply)
    first_line = normalise(reply.strip().split("\n", 1)[0])
    for key, trouble in _KEYS:
        if whole.startswith(key) or first_line.startswith(key):
            return None if asked and key in normalise(asked) else trouble
    return None


@dataclass
class Holdback:
    """Keeps streamed text back while it could still turn out to be a trouble text.

    Coze streams its error notices like answers; once a client has the words it cannot be
    told they were an error, so nothing shows until the text has left every known prefix.
    """

    holding: bool = True

    def visible(self, text: str) -> str:
        """What of `text` (the reply so far) may be shown now: nothing, or all of it."""
        if self.holding:
            current = normalise(text)
            if any(key.startswith(current) or current.startswith(key) for key, _ in _KEYS):
                return ""
            self.holding = False
        return text
