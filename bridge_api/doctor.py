"""`coze-bridge doctor`: checks the real setup against Discord (issue 12; being built)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    print("coze-bridge doctor: not built yet", file=sys.stderr)
    return 2
