"""sqlprobe: would a new opencode instance block on its SQLite database, and on whom?

Library use::

    from sqlprobe import check, judge
    snapshot = check("~/.local/share/opencode")
    verdict = judge(snapshot)
    print(verdict.state, verdict.reason, verdict.exit_code)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "check", "judge"]


def __getattr__(name: str):  # lazy: `import sqlprobe` must stay cheap for the CLI
    if name == "check":
        from sqlprobe.collect.snapshot import check

        return check
    if name == "judge":
        from sqlprobe.judge.verdict import judge

        return judge
    raise AttributeError(name)
