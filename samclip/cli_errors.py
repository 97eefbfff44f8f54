"""User errors at the command line: one line on stderr and exit status 2, not a traceback.

A bad prompt string, a missing file, a wrong-size checkpoint or a config mistake is the user's to fix, and
the one line names what and where. Bugs (anything else) keep their traceback. ``--debug``, ``SAMCLIP_DEBUG=1``
or Hydra's ``HYDRA_FULL_ERROR=1`` show the traceback of user errors too.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

# OSError covers missing files, directories given as files, unreadable images (PIL's UnidentifiedImageError)
# and a full disk; ValueError is what samclip raises for bad values.
USER_ERRORS = (ValueError, OSError, OmegaConfBaseException)
DEBUG_FLAG = "--debug"


def debug_requested(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    return (
        DEBUG_FLAG in argv
        or os.environ.get("SAMCLIP_DEBUG", "") not in ("", "0")
        or os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")
    )


def pop_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug``, and whether it was there (for CLIs whose parser does not know it)."""
    return [arg for arg in argv if arg != DEBUG_FLAG], DEBUG_FLAG in argv


def one_line(error: BaseException) -> str:
    """The message of ``error`` as one line; OmegaConf errors name their full config key."""
    if isinstance(error, MissingMandatoryValue) and error.full_key:
        return f"{error.full_key} must be set (it is ??? in the config); give it as an override: {error.full_key}=..."
    if isinstance(error, OmegaConfBaseException) and getattr(error, "full_key", None):
        return f"{error.full_key}: {str(error.msg).splitlines()[0]}"
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


@contextlib.contextmanager
def user_errors(prog: str, debug: bool | None = None) -> Iterator[None]:
    """Turn user errors raised inside into ``prog: error: <one line>`` and ``SystemExit(2)``."""
    try:
        yield
    except USER_ERRORS as error:
        if debug_requested() if debug is None else debug:
            raise
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        raise SystemExit(2) from None
