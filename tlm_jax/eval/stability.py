"""The stability gap: does a metric first get worse, then recover, during continual pretraining?

Guo et al. (arXiv 2406.14833) see domain and general accuracy dip below the starting
model's and then climb back (a V) while domain perplexity falls steadily. Applied to
a curve logged every few steps (``metrics.jsonl``), :func:`stability_gap` reports how
far and where the curve went below its step-0 value and whether it came back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def stability_gap(steps: Sequence[int], values: Sequence[float], *, higher_is_better: bool,
                  tol: float = 0.0) -> dict[str, Any]:
    """Dip, worst point and recovery of a metric curve relative to its first value.

    Args:
        steps: evaluation steps, ascending (the first is the starting model).
        values: the metric at those steps (accuracy: ``higher_is_better``; loss: not).
        tol: a change smaller than this is noise (same units as ``values``).

    Returns:
        ``start``, ``worst``, ``worst_step``, ``final``, ``best``; ``gap`` = how far the worst
        point is below the start (>= 0, in "worse" units); ``dip`` = the curve went worse
        than the start by more than ``tol`` (the stability gap); ``recovered`` = the final
        value is back within ``tol`` of the start or better; ``v_shape`` = a dip and then
        an improvement of more than ``tol`` from the worst point by the end.
    """
    s = np.asarray(steps)
    v = np.asarray(values, np.float64)
    if len(v) == 0 or len(v) != len(s):
        raise ValueError("steps and values must be non-empty and of equal length")
    sign = 1.0 if higher_is_better else -1.0
    good = sign * v  # higher = better from here on
    w = int(np.argmin(good))
    gap = float(good[0] - good[w])
    dip = gap > tol
    improvement = float(good[-1] - good[w])
    return {"start": float(v[0]), "worst": float(v[w]), "worst_step": int(s[w]),
            "final": float(v[-1]), "best": float(v[int(np.argmax(good))]),
            "gap": max(gap, 0.0), "dip": bool(dip),
            "recovered": bool(good[-1] >= good[0] - tol),
            "recovery": max(improvement, 0.0), "v_shape": bool(dip and improvement > tol)}


def eval_steps(total_steps: int, every: int, *, start: int = 0) -> list[int]:
    """The steps at which the pretraining loop evaluates: ``start``, every ``every``, the last."""
    out = [start] if start == 0 else []
    if every > 0:
        out += [s for s in range(start + 1, total_steps) if s % every == 0]
    if total_steps not in out:
        out.append(total_steps)
    return out


__all__ = ["eval_steps", "stability_gap"]
