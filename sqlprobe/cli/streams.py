"""The command line's standard streams and Ctrl-C: closed or failing output, valid JSON, SIGINT.

- A standard stream the caller closed (`sqlprobe check >&-`) is held by /dev/null, close-on-exec:
  sqlprobe writes into nothing, no file it opens can take that number (the queue lock must not
  become the command's stdout), and a command `run` starts still finds it closed.
- A failed write to stdout (a full disk, /dev/full) is an OutputError, caught where the command
  ends: one line on stderr and ExitCode.OUTPUT. A failed write to stderr is dropped: there is
  nowhere left to say it.
- Both are encoded with backslashreplace: whatever reaches them, printing never raises
  UnicodeEncodeError (what sqlprobe prints is escaped already: text.safe).
- JSON is written valid Unicode (json_text): a byte of a name that is not UTF-8 as `\\xff`.
- SIGINT raises Interrupted, which click does not catch (it would print "Aborted!" and exit 1):
  the clean-ups on the way out run (an isolated run's directory), then the process leaves
  with 130, printing nothing more.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from types import FrameType
from typing import Any, TextIO

from sqlprobe.text import unsurrogate

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C


class OutputError(OSError):
    """Writing to stdout failed (not a broken pipe: the reader going away is no error)."""


class Interrupted(BaseException):
    """SIGINT. A BaseException, so that neither click nor an `except Exception` catches it."""


class _Output(io.FileIO):
    """A standard stream's descriptor; a failed write raises OutputError, or with `drop`
    (stderr) is dropped."""

    def __init__(self, fd: int, drop: bool) -> None:
        super().__init__(fd, "w", closefd=False)
        self.drop = drop

    def write(self, data: bytes) -> int:  # type: ignore[override]
        try:
            return super().write(data) or 0
        except BrokenPipeError:
            if self.drop:
                return len(data)
            raise
        except OSError as err:
            if self.drop:
                return len(data)
            raise OutputError(err.errno, err.strerror) from None


def _stream(fd: int, old: TextIO | None, drop: bool) -> TextIO:
    tty = os.isatty(fd)
    return io.TextIOWrapper(
        io.BufferedWriter(_Output(fd, drop)),
        encoding=old.encoding if old is not None else "utf-8",
        errors="backslashreplace",
        line_buffering=tty or drop,
        write_through=drop,
    )


def _hold_closed_descriptors() -> None:
    import fcntl

    for fd in (0, 1, 2):
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)  # open? (an fstat would ask the file's filesystem)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            if null != fd:
                os.dup2(null, fd, inheritable=False)
                os.close(null)


def _on_sigint(_signum: int, _frame: FrameType | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut a clean-up short
    raise Interrupted


def prepare() -> None:
    """Set up the standard streams and SIGINT as the module's docstring says."""
    _hold_closed_descriptors()
    sys.stdout = _stream(1, sys.stdout, drop=False)
    sys.stderr = _stream(2, sys.stderr, drop=True)
    # Only where SIGINT is Python's own: an ignored one (`nohup`, a background job) stays so.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def cannot_write(err: OSError) -> int:
    """Say that the output was lost, on stderr; the exit code for it."""
    from sqlprobe.verdict.judge import ExitCode

    sys.stderr.write(f"sqlprobe: cannot write output: {err.strerror or err}\n")
    return int(ExitCode.OUTPUT)


def flush() -> None:
    """Flush both streams. Raises OutputError when stdout's last bytes cannot be written."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass  # a reader that went away: nothing more to say
    finally:
        sys.stderr.flush()


def json_text(doc: Any) -> str:
    """The JSON document, every string valid Unicode: a byte of a name that is not UTF-8
    (which Python carries as a lone surrogate, `\\udcff`, that strict parsers reject or
    replace with U+FFFD) is written as the four characters `\\xff`, as the text report
    shows it; any other lone surrogate as `\\ud800`."""
    import json

    return json.dumps(_valid_unicode(doc), indent=2)


def _valid_unicode(value: Any) -> Any:
    if isinstance(value, str):
        return unsurrogate(value)
    if isinstance(value, dict):
        return {_valid_unicode(k): _valid_unicode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_valid_unicode(v) for v in value]
    return value
