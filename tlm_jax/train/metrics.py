"""Metrics: ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard events.

On resume the JSONL file is cut back to the restored step, so it reads as one
continuous run; only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tensorboardX import SummaryWriter


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    """Append metrics records; mirror scalars to TensorBoard."""

    def __init__(self, workdir: str | Path, *, resume_step: int = 0, tensorboard: bool = True,
                 enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        self._truncate(resume_step)
        if tensorboard:
            self.writer = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def _truncate(self, resume_step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                # A run restarted from scratch re-evaluates step 0: keep nothing of the
                # killed attempt (else step 0 appears twice). A resumed run does not
                # re-evaluate its checkpoint's step, so that step's records stay.
                step = int(json.loads(line).get("step", 0))
                if step < resume_step or (step == resume_step and resume_step > 0):
                    kept.append(line)
            except (ValueError, AttributeError):
                continue  # a line cut by a crash
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict[str, Any], prefix: str = "train") -> None:
        """Write one record ``{"step": step, "split": prefix, **metrics}``."""
        if not self.enabled:
            return
        rec = {"step": int(step), "split": prefix, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for k, v in rec.items():
                if k not in ("step", "split") and isinstance(v, int | float):
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.writer is not None:
            self.writer.close()


def read_metrics(workdir: str | Path, split: str | None = "train") -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl`` (optionally one split only)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if split is None or rec.get("split") == split:
            out.append(rec)
    return out
