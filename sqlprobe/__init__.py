"""sqlprobe: would a new opencode instance block on its SQLite database, and on whom?

Library use::

    from sqlprobe import check, judge
    snapshot = check("~/.local/share/opencode")
    verdict = judge(snapshot)
    print(verdict.state, verdict.reason, verdict.exit_code)

The commands as calls, with the result objects the CLI renders::

    from sqlprobe import CheckOptions, diagnose, inspect, wait
    report = inspect(None, options=CheckOptions(window=0))  # check: Report(snapshot, verdict)
    result = diagnose(None)  # DiagnoseResult(snapshot, verdict, diagnosis, missing, ...)
    waited = wait(None, until="clear", timeout=60)  # WaitResult(reached, snapshot, verdict, ...)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["CheckOptions", "__version__", "check", "diagnose", "inspect", "judge", "wait"]

# name -> (module, attribute): imported on first use, `import sqlprobe` must stay cheap for the CLI
_LAZY = {
    "check": ("sqlprobe.workflows.check", "take_snapshot"),
    "judge": ("sqlprobe.verdict.judge", "judge"),
    "inspect": ("sqlprobe.workflows.check", "inspect"),
    "wait": ("sqlprobe.workflows.wait", "wait"),
    "diagnose": ("sqlprobe.workflows.diagnose", "diagnose_target"),
    "CheckOptions": ("sqlprobe.options", "CheckOptions"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sqlprobe' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(module), attribute)
