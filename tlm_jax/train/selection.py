"""INGENIOUS inside the pretraining loop: warm start, features, selection plan, refreshes.

The loop asks :class:`SelectionHook` for its training dataset and calls
:meth:`SelectionHook.refresh` once, at step ``W`` (``data.selection.warm_steps``):
the hook embeds every training example with the model being trained (masked mean
of layer ``data.selection.layer``), computes the partitioned facility-location
gains and Taylor-softmax probabilities (:mod:`tlm_jax.data.selection`), saves them
to ``WORKDIR/selection.npz`` and swaps in a dataset that reads subset ``q`` during
steps ``[W + qR, W + (q+1)R)`` -- the paper's schedule: the subset is redrawn every
``R`` steps from the *same* probabilities, gains are never recomputed.

Resuming stays exact: every batch is a function of its global index (warm-start
batches equal the full-data pipeline's), the checkpoint holds the iterator's
position, and the plan is reloaded from ``selection.npz`` (written before any
checkpoint after step ``W`` exists). A run resumed before ``W`` recomputes the same
plan from the same (bit-exactly restored) weights.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np

from tlm_jax.data.pipeline import make_iterator
from tlm_jax.data.selection import (
    METHODS,
    OPTIMIZERS,
    SelectionPlan,
    SubsetSchedule,
    make_scheduled_dataset,
    mean_cosine,
    phase_summary,
    plan_selection,
)
from tlm_jax.errors import TLMError
from tlm_jax.train.docscore import example_features
from tlm_jax.train.run import Run

PLAN_FILE = "selection.npz"
INFO_FILE = "selection.json"


def check_selection(cfg: Any) -> None:
    """Refuse selection settings that cannot work (``cfg`` is ``data.selection``)."""
    if cfg.method not in METHODS:
        raise TLMError(f"data.selection.method={cfg.method!r} is unknown",
                       f"use one of: {', '.join(METHODS)}")
    if cfg.optimizer not in OPTIMIZERS:
        raise TLMError(f"data.selection.optimizer={cfg.optimizer!r} is unknown",
                       f"use one of: {', '.join(OPTIMIZERS)}")
    if not 0.0 < cfg.fraction <= 1.0:
        raise TLMError(f"data.selection.fraction={cfg.fraction} is outside (0, 1]",
                       "use e.g. 0.25 (the paper's 25 %)")
    if cfg.warm_steps < 0 or cfg.refresh_every < 0 or cfg.partitions < 0:
        raise TLMError("data.selection warm_steps, refresh_every and partitions must be >= 0",
                       "fix the negative value")


class SelectionHook:
    """The loop's view of subset selection (one per :func:`~tlm_jax.train.loop.pretrain` call)."""

    def __init__(self, run: Run, workdir: Path, *, seed: int, log: Callable[[str], None] = print
                 ) -> None:
        sel = run.cfg.data.selection
        check_selection(sel)
        if getattr(run, "insertions", None) is not None:
            raise TLMError("data.selection cannot be combined with stream insertions",
                           "use one of data.selection and interventions.file per run")
        if jax.process_count() > 1:
            raise TLMError("data.selection runs in a single process (features are computed on "
                           "the host)", "run selection single-process, or set method=none")
        self.run, self.sel, self.workdir, self.log = run, sel, Path(workdir), log
        self.path = self.workdir / PLAN_FILE
        plan = SelectionPlan.load(self.path) if self.path.is_file() else None
        if plan is not None and plan.num_examples != len(run.train_source):
            raise TLMError(f"{self.path} was made for {plan.num_examples} examples, the data "
                           f"has {len(run.train_source)}", "use a new --workdir")
        self.schedule = SubsetSchedule(len(run.train_source), run.cfg.train.batch_size,
                                       seed=seed, warm_steps=sel.warm_steps,
                                       refresh_every=sel.refresh_every, plan=plan)
        if sel.warm_steps >= run.steps:
            log(f"warning: data.selection.warm_steps={sel.warm_steps} >= {run.steps} steps: "
                "the run never leaves the warm start (all data)")

    def dataset(self) -> grain.MapDataset:
        """The training batches (same element structure as ``make_dataset``'s)."""
        return make_scheduled_dataset(self.run.train_source, self.schedule)

    def due(self, step: int) -> bool:
        """Whether the plan must be computed before training step ``step``."""
        return self.schedule.plan is None and step >= self.sel.warm_steps

    def refresh(self, state: Any, it: grain.DatasetIterator, *, prefetch: int = 2,
                workers: int = 0, main: bool = True) -> grain.DatasetIterator:
        """Compute and save the plan from the train ``state``; an iterator at ``it``'s position."""
        run, sel = self.run, self.sel
        n = len(run.train_source)
        t0 = time.perf_counter()
        features = None
        if sel.method == "ingenious":
            host = jax.device_get({"params": state.params, **state.model_state})
            src = run.train_source
            features = example_features(
                run.model, host, lambda ids: np.stack([src[int(i)] for i in ids]), n,
                pad=run.corpus.special.pad, layer=sel.layer,
                batch=max(run.cfg.train.batch_size, 64))
        t1 = time.perf_counter()
        plan = plan_selection(features, num_examples=n, fraction=sel.fraction,
                              partitions=sel.partitions, method=sel.method,
                              optimizer=sel.optimizer, epsilon=sel.epsilon,
                              temperature=sel.temperature, seed=self.schedule.seed,
                              center=sel.center)
        t2 = time.perf_counter()
        self.schedule.plan = plan
        if main:
            plan.save(self.path)
            cos = None
            if features is not None:
                cos = mean_cosine(features - features.mean(0) if sel.center else features)
            self._write_info(plan, t1 - t0, t2 - t1, cos)
        self.log(f"selection ({sel.method}): {n} examples in {plan.blocks.shape[0]} blocks, "
                 f"subsets of {int(plan.block_shares().sum())} redrawn every "
                 f"{sel.refresh_every or 'never'} steps; features {t1 - t0:.1f}s, "
                 f"gains {t2 - t1:.1f}s")
        new = make_iterator(self.dataset(), prefetch=prefetch, workers=workers)
        new.set_state(it.get_state())
        return new

    def _write_info(self, plan: SelectionPlan, feature_s: float, greedy_s: float,
                    cosine: float | None) -> None:
        g = plan.gains
        info = {"method": plan.method, "examples": plan.num_examples,
                "center": self.sel.center, "mean_cosine": cosine,
                "small_gain_fraction": float((g < 0.01).mean()),
                "subset_size": int(plan.block_shares().sum()), "fraction": plan.fraction,
                "blocks": int(plan.blocks.shape[0]), "block_size": int(plan.blocks.shape[1]),
                "warm_steps": self.sel.warm_steps, "refresh_every": self.sel.refresh_every,
                "optimizer": self.sel.optimizer, "layer": self.sel.layer,
                "feature_seconds": round(feature_s, 2), "gain_seconds": round(greedy_s, 2),
                "gain_quartiles": np.quantile(g, [0, 0.25, 0.5, 0.75, 1]).tolist(),
                "prob_max_over_uniform": float(
                    (plan.probs * (plan.blocks >= 0).sum(1).max()).max()),
                "phases": phase_summary(self.schedule, self.run.steps)}
        tmp = self.workdir / (INFO_FILE + ".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(self.workdir / INFO_FILE)
