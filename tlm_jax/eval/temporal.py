"""Temporal degradation (TD) of a model family over data years (Luu et al.; Longpre et al. 2024).

TD is the score lost per year of distance between the pretraining data's year and
the evaluation data's year. The guide's exact regression form is not given; this
module uses ordinary least squares of ``score`` on ``|pretrain_year - eval_year|``
and reports ``TD = -slope`` (positive = older/newer data hurts), with Pearson's r
between the distance and the score loss. On ``score = a - s * |dy|`` it returns
exactly ``s``; on constant scores ``0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tlm_jax.errors import TLMError


def temporal_degradation(pretrain_years: Sequence[float], eval_years: Sequence[float],
                         scores: Sequence[float]) -> dict[str, Any]:
    """TD, intercept and Pearson r from one score per (pretraining year, evaluation year) pair.

    Raises:
        TLMError: on mismatched lengths or when every pair has the same year distance.
    """
    py, ey, s = (np.asarray(v, np.float64) for v in (pretrain_years, eval_years, scores))
    if not len(py) == len(ey) == len(s) or len(s) < 2:
        raise TLMError("temporal_degradation needs >= 2 equally long year/score sequences",
                       "pass one score per (pretraining year, evaluation year) pair")
    d = np.abs(py - ey)
    if np.ptp(d) == 0:
        raise TLMError("every pair has the same year distance, so TD is undefined",
                       "evaluate on more than one year distance")
    # Closed-form OLS on centred values: constant scores give a slope of exactly 0.
    dc, sc = d - d.mean(), s - s.mean()
    slope = float((dc * sc).sum() / (dc * dc).sum())
    intercept = float(s.mean() - slope * d.mean())
    r = 0.0 if np.ptp(s) == 0 else float(np.corrcoef(d, -s)[0, 1])
    return {"td": float(-slope) + 0.0, "intercept": float(intercept), "r": r, "n": int(len(s))}
