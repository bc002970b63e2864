"""Experiment trackers beside ``metrics.jsonl``: a Weights & Biases run (``train.wandb=true``).

:class:`MetricsLogger` (tlm_jax/train/metrics.py) hands every record's scalars to the
trackers it opened, under the same ``split/name`` keys and steps as TensorBoard. The wandb
run's id is kept in the run directory (``wandb_id.txt``), so a run resumed from a checkpoint
continues the same wandb run. Only the main process opens a tracker (the logger is disabled
on the others). ``wandb`` is the optional ``wandb`` extra, imported only when asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

from tlm_jax.config import Config, to_dict
from tlm_jax.errors import TLMError

WANDB_ID_FILE = "wandb_id.txt"
WANDB_MODES = ("", "online", "offline", "disabled")


def import_wandb() -> ModuleType:
    """The ``wandb`` module, or a one-line error naming the extra that installs it."""
    try:
        import wandb  # noqa: PLC0415 - optional wandb extra
    except ImportError as e:
        raise TLMError("train.wandb=true needs the wandb package, which is not installed",
                       "pip install 'tlm-jax[wandb]' or set train.wandb=false") from e
    return wandb


class WandbTracker:
    """One wandb run per run directory, fed the scalars of every metrics record.

    Args:
        workdir: the run directory; holds ``wandb_id.txt`` and, unless ``WANDB_DIR`` is set,
            wandb's own ``wandb/`` folder.
        config: the resolved run config (logged as the wandb run's config); its ``train.wandb_*``
            fields pick the project, name, tags and mode.
        resume_step: the step the loop restored. The stored id is reused only when it is > 0:
            a run restarted from scratch begins a new wandb run, as ``metrics.jsonl`` starts
            empty again.
    """

    def __init__(self, workdir: str | Path, config: Config, *, resume_step: int = 0) -> None:
        train = config.train
        if train.wandb_mode not in WANDB_MODES:
            raise TLMError(f"train.wandb_mode={train.wandb_mode!r} is not a wandb mode",
                           "use online, offline, disabled or '' (wandb's default / WANDB_MODE)")
        wandb = import_wandb()
        workdir = Path(workdir)
        id_path = workdir / WANDB_ID_FILE
        run_id = id_path.read_text().strip() if resume_step > 0 and id_path.exists() else None
        try:
            self.run = wandb.init(
                project=train.wandb_project, name=train.wandb_name or workdir.resolve().name,
                id=run_id or None, resume="allow", tags=list(train.wandb_tags) or None,
                mode=train.wandb_mode or None, config=to_dict(config),
                # Beside the run's other outputs unless the user chose a place. Passed every
                # time: wandb reads WANDB_DIR once per process, not once per run.
                dir=os.environ.get("WANDB_DIR") or str(workdir))
        except wandb.errors.Error as e:
            raise TLMError(f"wandb could not start a run: {' '.join(str(e).split())}",
                           "run `wandb login`, or set train.wandb_mode=offline and "
                           "`wandb sync` later") from e
        if not self.run.disabled:
            workdir.mkdir(parents=True, exist_ok=True)
            id_path.write_text(self.run.id + "\n")

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        """Log ``{"split/name": value}`` at ``step``.

        wandb drops a step lower than one it already has: after a crash, the steps between
        the restored checkpoint and the crash keep the values the killed attempt logged.
        """
        if scalars:
            self.run.log(scalars, step=int(step))

    def close(self) -> None:
        """Finish the wandb run (uploads or closes the offline files)."""
        self.run.finish()
