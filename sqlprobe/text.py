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


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
