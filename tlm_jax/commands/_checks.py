"""Checks of command-line options that the ``tlm`` subcommands share, run before any work starts.

Each failure is a :class:`~tlm_jax.errors.TLMError` naming the option, its value and the fix.
(The leading underscore keeps this module out of the subcommand registry in ``tlm_jax.cli``.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tlm_jax.errors import TLMError

# Integers beyond this overflow the int32/int64 arrays they end up in (seeds: uint32).
MAX_INT = 2**31 - 1


def shown(value: Any, limit: int = 40) -> str:
    """``value`` for an error line, the middle of a long one elided."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[:limit - 12]}...{text[-9:]}"


def output_dir(path: str, option: str) -> Path:
    """``path`` as a directory a command may create or fill: refuse an empty path, a regular file,
    or a path under a regular file (``mkdir`` would fail half-way through the command)."""
    if not path.strip():
        raise TLMError(f"{option} is empty", f"pass {option} DIR; it is created if missing")
    p = Path(path).expanduser()
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                where = "is a file" if q == p else f"is under the file {q}"
                raise TLMError(f"{option} {shown(path, 80)} {where}, not a directory",
                               f"pass a new or existing directory as {option}")
            break
    return p


def input_dir(path: str, option: str, what: str) -> Path:
    """``path`` as an existing directory holding ``what``."""
    p = Path(path).expanduser()
    if not p.is_dir():
        state = "is a file" if p.exists() else "does not exist"
        raise TLMError(f"{option} {shown(path, 80)} {state}; it must be a directory",
                       f"pass {what}")
    return p


def check_option(option: str, value: Any, ok: Callable[[Any], bool], want: str) -> None:
    """Refuse ``value`` of ``option`` unless ``ok(value)``; ``want`` says what it must be."""
    if not ok(value):
        raise TLMError(f"{option} {shown(value)} is invalid: it must be {want}",
                       f"pass a valid {option}")


def finite(x: float) -> bool:
    """A finite number (not nan, not +-inf)."""
    return math.isfinite(x)
