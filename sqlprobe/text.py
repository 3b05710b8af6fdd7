"""Making text from other processes safe to print: no control characters, bounded length."""

from __future__ import annotations

import re

# C0 and C1 controls and DEL: an escape sequence in a command line must not reach a terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def safe(text: str) -> str:
    """`text` with every control character shown as a visible escape (`\\x1b`, `\\n`).

    Bytes of a file name that are not UTF-8 (surrogate-escaped by Python) are shown as `\\xff`.
    """
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def shorten(text: str, width: int) -> str:
    """`text` cut to `width` characters, ending in an ellipsis when cut."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"
