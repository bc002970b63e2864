"""The non-finite guard of the pretraining loop: stop (or skip) before a NaN reaches a checkpoint.

A step whose loss or gradient norm is not finite stops the run with :class:`NonFiniteError`
(``tlm`` exits with status 3) before anything of it is checkpointed, so a resume restores the
last good checkpoint. With ``train.nonfinite=skip`` the step function leaves the state unchanged
for such a step (``make_train_step(skip_nonfinite=True)``), the loop counts it in
``metrics.jsonl`` (``skipped``) and stops after ``train.max_skipped`` in a row.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from tlm_jax.errors import NonFiniteError
from tlm_jax.train.checkpoint import Checkpointer
from tlm_jax.train.metrics import MetricsLogger

WATCHED = ("loss", "grad_norm")
HINT = ("lower optim.lr, keep optim.clip_norm > 0, or train in float32 (model.dtype=float32); "
        "rerun the same command to resume from the last good checkpoint")


class NonFiniteGuard:
    """Checks each step's loss and gradient norm (``mode`` = ``stop`` or ``skip``)."""

    def __init__(self, mode: str, max_skipped: int, ckpt: Checkpointer,
                 logger: MetricsLogger) -> None:
        self.mode, self.max_skipped, self.ckpt, self.logger = mode, max_skipped, ckpt, logger
        self.in_a_row = 0
        self.total_skipped = 0
        self._checked = -1

    def _last_good(self) -> str:
        steps = self.ckpt.steps()
        return f"step {steps[-1]}" if steps else "none yet"

    def check(self, step: int, metrics: dict[str, Any]) -> None:
        """Raise :class:`NonFiniteError` if step ``step``'s metrics say it went non-finite."""
        if step <= self._checked:  # a step is checked once (late check and checkpoint check)
            return
        self._checked = step
        watched = {k: metrics[k] for k in WATCHED if k in metrics}
        values = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in jax.device_get(watched).items()}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if not bad:
            self.in_a_row = 0
            return
        what = ", ".join(f"{k}={values[k]}" for k in bad)
        if self.mode == "skip":
            self.in_a_row += 1
            self.total_skipped += 1
            self.logger.log(step, {"skipped": 1.0, "skipped_total": float(self.total_skipped),
                                   **{f"nonfinite_{k}": 1.0 for k in bad}})
            if self.in_a_row < self.max_skipped:
                return
            raise NonFiniteError(f"step {step}: {what}; {self.in_a_row} updates in a row skipped "
                                 f"(train.max_skipped={self.max_skipped}); last good checkpoint: "
                                 f"{self._last_good()}", HINT)
        raise NonFiniteError(f"step {step}: {what} is not finite; the run stopped without "
                             f"checkpointing it (last good checkpoint: {self._last_good()})", HINT)
