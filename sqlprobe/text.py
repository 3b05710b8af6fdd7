"""Making text from other processes safe to print: no control characters, no secrets, bounded
length."""

from __future__ import annotations

import re

# C0 and C1 controls and DEL: an escape sequence in a command line must not reach a terminal.
# Bidi controls (Unicode TR9: LRE..RLO, LRI..PDI, LRM, RLM, ALM) and the line and paragraph
# separators: a log line or a file name must not reorder or break what is printed after it
# (CVE-2021-42574, "Trojan Source").
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")

# What makes a name (of a variable, of an option) look like it holds a secret.
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
REDACTED = "(redacted)"
# `NAME=value` (an assignment in `sh -c`, an `--option=value`, a URL's query) and
# `--option value`; the name is judged by `looks_secret`, not in the pattern, which keeps the
# match linear on a long argument. A quoted value counts as one.
_VALUE = r"""(?:"[^"]*"?|'[^']*'?|[^\s"']\S*)"""
_ASSIGNED = re.compile(rf"(?<![^\s'\"?&;])([\w.-]+)=({_VALUE}?)")
_OPTION = re.compile(rf"(?<!\S)(--[\w.-]+)(\s+)(?!-)({_VALUE})")


def safe(text: str) -> str:
    """`text` with every control character shown as a visible escape (`\\x1b`, `\\n`,
    `\\u202e`).

    Bytes of a file name that are not UTF-8 (surrogate-escaped by Python) are shown as `\\xff`
    (`unsurrogate`).
    """
    return _CONTROL.sub(_escape, unsurrogate(text))


_SURROGATE = re.compile("[\ud800-\udfff]")


def unsurrogate(text: str) -> str:
    """`text` as valid Unicode: a byte of a name that is not UTF-8 (which Python carries as a
    surrogate escape, U+DC80..U+DCFF) as the four characters `\\xff`, any other lone surrogate
    (from a JSON file's `\\ud800`, say) as `\\ud800`."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub(lambda m: surrogate_shown(ord(m.group())), text)
    return text


def surrogate_shown(code: int) -> str:
    """How `unsurrogate` writes the lone surrogate `code`."""
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, surrogate-escaped
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return repr(char)[1:-1] if char < "\xa0" else f"\\u{ord(char):04x}"


def looks_secret(name: str) -> bool:
    """Whether a variable's or an option's name says it holds a secret (`OPENCODE_API_KEY`)."""
    upper = name.upper()
    return any(word in upper for word in SECRET_WORDS)


def redact_command(command: str) -> str:
    """`command` (argv joined by spaces) with the values of secret-looking options and
    assignments replaced: `--password X`, `--api-key=X`, `OPENAI_API_KEY=X`.

    Best effort: a secret passed any other way (a positional argument, a short option like
    `-p X`) is printed as it is.
    """
    command = _ASSIGNED.sub(_redact_assigned, command)
    return _OPTION.sub(_redact_option, command)


def _redact_assigned(m: re.Match[str]) -> str:
    return f"{m.group(1)}={REDACTED}" if looks_secret(m.group(1)) else m.group()


def _redact_option(m: re.Match[str]) -> str:
    return f"{m.group(1)}{m.group(2)}{REDACTED}" if looks_secret(m.group(1)) else m.group()


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


def seconds(value: float) -> str:
    """A number of seconds for a sentence ("the 1 s timeout"): to the hundredth, trailing zeros
    dropped (a computed 0.999998 is 1); two significant digits below 0.1."""
    if 0 < abs(value) < 0.1:
        return f"{value:.2g}"
    return f"{round(value, 2):.15g}"


def shell_quote(text: str) -> str:
    """`text` as one shell word to copy and paste: shlex.quote's, or bash's `$'...'` when it
    holds a control character or a byte that is not UTF-8 (`$'a\\x1bb\\xff'`), so that neither
    reaches the terminal raw."""
    import shlex

    try:
        text.encode("utf-8")
        plain = not _CONTROL.search(text)
    except UnicodeEncodeError:
        plain = False
    if plain:
        return shlex.quote(text)
    return "$'" + "".join(_shell_char(c) for c in text) + "'"


def _shell_char(char: str) -> str:
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        return surrogate_shown(code)
    if char in "\\'":
        return "\\" + char
    if _CONTROL.match(char):
        return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"
    return char


# Programs whose first argument is the script that names what runs (`python3 holder.py`).
_INTERPRETERS = re.compile(r"(python|pypy|node|bun|deno|ruby|perl|php|[bd]?a?sh|zsh)[\d.]*")


def wrap(text: str, width: int | None, indent: str = "", hang: str | None = None) -> list[str]:
    """`text` as lines of at most `width` columns, the first after `indent`, the others after
    `hang` (`indent` by default); one line when `width` is None (output to a pipe).

    Words are never broken, so a path or a command stays whole to copy.
    """
    import textwrap

    hang = indent if hang is None else hang
    if width is None:
        return [indent + text]
    width = max(width, len(hang) + 20, len(indent) + 20)
    lines = textwrap.wrap(
        text,
        width,
        initial_indent=indent,
        subsequent_indent=hang,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return lines or [indent.rstrip()]


def elide_path(path: str) -> str:
    """`path` with its middle directories shown as an ellipsis: `/tmp/…/opencode.db`."""
    parts = path.split("/")
    if len(parts) <= 3 or not parts[-1]:
        return path
    head = parts[:2] if not parts[0] else parts[:1]
    elided = "/".join([*head, "…", parts[-1]])
    return elided if len(elided) < len(path) else path


def short_command(command: str, width: int | None = None) -> str:
    """`command` (argv joined by spaces) as a table shows it: the program's basename (and an
    interpreter's script's) and its arguments; past `width` columns, long paths lose their
    middle, then the end is cut.

    `/usr/bin/python3 /srv/t/holder.py /tmp/a/b/opencode.db wal-write` is
    `python3 holder.py /tmp/a/b/opencode.db wal-write`, or at 36 columns
    `python3 holder.py /tmp/…/opencode.db wal-write`.
    """
    words = command.split(" ")
    if not words[0]:
        return shorten(command, width) if width else command
    words[0] = words[0].rsplit("/", 1)[-1] or words[0]
    script = words[1] if len(words) > 1 else ""
    if _INTERPRETERS.fullmatch(words[0]) and "/" in script and not script.startswith("-"):
        words[1] = script.rsplit("/", 1)[-1] or script
    text = " ".join(words)
    if width is None or len(text) <= width:
        return text
    for i in sorted(range(1, len(words)), key=lambda i: -len(words[i])):
        words[i] = elide_path(words[i])
        text = " ".join(words)
        if len(text) <= width:
            return text
    return shorten(text, width)


# What files.file_type() calls a symbolic link that leads nowhere (or into a loop).
DANGLING = "dangling symbolic link"


def is_a(kind: str) -> str:
    """The problem text for a file that is a `kind` (a file_type): "is a FIFO, not a regular
    file"; a directory or a symbolic link is said as it is."""
    if kind == "directory" or kind.endswith("symbolic link"):
        return f"is a {kind}"
    return f"is a {kind}, not a regular file"
