"""Short error-message helpers shared by config loading and validation."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any


def show(value: Any, limit: int = 40) -> str:
    """``value`` for an error line: ``repr`` of a string, ``str`` of anything else; the middle of
    a long one elided so that a pasted blob cannot make the line unreadable."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[:limit - 12]}...{text[-9:]}"


def clip_words(text: str, limit: int = 40) -> str:
    """``text`` with every run of over ``limit`` non-blank characters (a value a library quoted
    back, a huge number) elided in the middle."""
    return re.sub(rf"\S{{{limit + 1},}}", lambda m: show(m.group(), limit).strip("'\""), text)


def suggest(name: Any, known: Iterable[str], lister: str, *, prefix: str = "") -> str:
    """A fix naming the few ``known`` names closest to ``name`` (else the first few) and where
    all of them are (``lister``, with ``{n}`` for their number) -- never the whole list, so the
    error stays one short line."""
    names = sorted(known)
    close = [c for c in difflib.get_close_matches(str(name), names, n=4, cutoff=0.6) if c != name][:3]
    shown = ", ".join(prefix + n for n in (close or names[:3]))
    lead, sep = ("did you mean", "?") if close else ("e.g.", ";")
    return f"{lead} {shown}{sep} {lister.format(n=len(names))}"


# What OmegaConf's merge raises for a bad value: its own errors, and TypeError/ValueError for some
# mismatched containers (a dict where a list belongs).
