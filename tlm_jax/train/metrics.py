"""Metrics: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard events and,
with ``train.wandb=true``, a Weights & Biases run (tlm_jax/train/trackers.py).

On resume the JSONL file is cut back to the restored step, so it reads as one
continuous run; only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tlm_jax.config import Config
from tlm_jax.train.trackers import WandbTracker


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    """Append metrics records; mirror scalars to TensorBoard and the trackers ``config`` asks for.

    ``config`` is the run's resolved config: with ``config.train.wandb`` its scalars also go to
    a wandb run (which logs the config itself). Nothing is opened when ``enabled`` is false.
    """

    def __init__(self, workdir: str | Path, *, resume_step: int = 0, tensorboard: bool = True,
                 enabled: bool = True, config: Config | None = None) -> None:
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self.writer = None
        self.trackers: list[WandbTracker] = []
        if not enabled:
            return
        self._truncate(resume_step)
        if tensorboard:
            # Lazy: tensorboardX imports torch whenever torch is installed (~5 s).
            from tensorboardX import SummaryWriter  # noqa: PLC0415 - reason: imports torch, slow

            self.writer = SummaryWriter(str(Path(workdir) / "tensorboard"))
        if config is not None and config.train.wandb:
            self.trackers.append(WandbTracker(workdir, config, resume_step=resume_step))

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
        scalars = {f"{prefix}/{k}": v for k, v in rec.items()
                   if k not in ("step", "split") and isinstance(v, int | float)}
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, step)
        for tracker in self.trackers:
            tracker.log(step, scalars)

    def close(self) -> None:
        """Flush TensorBoard; finish the trackers."""
        if self.writer is not None:
            self.writer.close()
        for tracker in self.trackers:
            tracker.close()


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
