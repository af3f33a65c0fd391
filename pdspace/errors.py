"""The base of every error a user can fix, and the one exit convention of pdspace's console scripts.

Every console script (`pdspace-train`, `-search`, `-refine`, `-report`, `-export`, `-bench`) exits
- 0 when it did what was asked;
- 1 with one line `<prog>: error: <what is wrong and the fix>` on stderr for bad input, a user error or a
  failed run (`exit_error`);
- 2 for a malformed command line (argparse's own usage error);
- 128 + N when signal N (SIGINT, SIGTERM) stopped it (`exit_interrupted`).
"""

from __future__ import annotations

import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn


class PDSpaceError(Exception):
    """An error a user can fix: reported as one line (its message names the problem and the fix)."""


def exit_error(prog: str, message: object) -> NoReturn:
    """Exit 1 with `<prog>: error: <message>` on stderr."""
    sys.exit(f"{prog}: error: {message}")


def cannot_write(path: object, ex: OSError, option: str) -> str:
    """The line for an output the user named (`option`, e.g. --out) that cannot be written."""
    return f"cannot write {path}: {ex.strerror or ex}; give {option} a place you can write"


@contextmanager
def warning_lines(prog: str) -> Iterator[None]:
    """The body's warnings (every one, repeats included) as one `<prog>: warning: <message>` line each on stderr,
    printed when it ends (also when it raises), not with the source line Python adds."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                print(f"{prog}: warning: {w.message}", file=sys.stderr)


def exit_interrupted(prog: str, signum: int, message: str | None = None) -> NoReturn:
    """Exit 128 + `signum` with `<prog>: interrupted by <SIGNAME>` (or `<prog>: <message>`) on stderr."""
    sys.stderr.write(f"{prog}: {message or f'interrupted by {signal.Signals(signum).name}'}\n")
    raise SystemExit(128 + signum)
