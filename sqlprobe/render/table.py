"""Plain tables that fit the terminal: columns dropped or wrapped, commands cut, and a note
saying what was hidden. Holder and opencode lock tables are drawn with it."""

from __future__ import annotations

from typing import Any

from sqlprobe.text import short_command, wrap

# The COMMAND column keeps at least this much before other columns go; cut to fit after that.
MIN_COMMAND = 28
WRAP_CELL = 24


def fitted(
    headers: list[str], rows: list[list[Any]], width: int | None, steps: list[tuple[str, str]]
) -> list[str]:
    """A plain table, indented two spaces, whose last column is COMMAND: at `width` columns,
    `steps` are taken in turn ("drop" a column, "wrap" one's words onto lines) until COMMAND
    has MIN_COMMAND columns (or all it needs), then COMMAND is cut to what is left. What was
    left out is said below the table, with how to see it."""
    import tabulate  # only the tables need it: keep it off the --quiet path

    def table(cols: list[str], cells: list[list[Any]]) -> str:
        # Fitting a terminal, headers get no padding beyond the 2-space gap (tabulate's
        # MIN_PADDING, a module global: restored at once).
        padding = tabulate.MIN_PADDING
        tabulate.MIN_PADDING = padding if width is None else 0
        try:
            return tabulate.tabulate(cells, headers=cols, tablefmt="plain", disable_numparse=True)
        finally:
            tabulate.MIN_PADDING = padding

    cols, cells = list(headers), [list(r) for r in rows]
    if width is None:
        return [_indent(table(cols, cells))]
    need = max(len(str(r[-1])) for r in cells)
    dropped = []

    def room() -> int:  # columns left for COMMAND: the indent, the others, a 2-space gap
        rest = table(cols[:-1], [r[:-1] for r in cells])
        return width - 2 - max(map(len, rest.splitlines())) - 2

    for action, name in steps:  # wrapping loses nothing: done until COMMAND fits whole
        if room() >= need or (action == "drop" and room() >= min(MIN_COMMAND, need)):
            continue
        i = cols.index(name)
        if action == "drop":
            dropped.append(name)
            del cols[i]
            for r in cells:
                del r[i]
        else:
            for r in cells:
                text = str(r[i])
                longest = max(map(len, text.split()), default=0)
                r[i] = "\n".join(wrap(text, max(WRAP_CELL, longest)))
    fit = max(room(), 10)
    cut = need > fit
    for r in cells:
        r[-1] = short_command(str(r[-1]), fit)
    lines = [_indent(table(cols, cells))]
    if dropped or cut:
        what = [f"{', '.join(dropped)} hidden"] if dropped else []
        what += ["commands cut"] if cut else []
        note = f"({', '.join(what)}, to fit {width} columns: --wide shows all)"
        lines.extend(wrap(note, width, "  ", "    "))
    return lines


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
