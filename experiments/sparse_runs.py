"""Pieces shared by the SLTrain and SPDF experiments: run variants, budgets, curves, step timing.

Both experiments pretrain the preset's shallow model several times -- identical documents,
tokenizer (the dense run's, reused), batch order, learning rate and step count -- changing
only ``model.linear``, then fine-tune every run *densely* on one task with the same seeds and
splits (:mod:`tlm_jax.tasks.finetune` densifies SLTrain / SPDF weights when it loads them).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax

from experiments import common as C
from tlm_jax import sharding as shd
from tlm_jax.commands.mem import linear_comparison, memory_report
from tlm_jax.config import load_config, read_config
from tlm_jax.data.pipeline import make_dataset
from tlm_jax.tasks.finetune import paired_gap
from tlm_jax.train.loop import compile_steps
from tlm_jax.train.metrics import read_metrics
from tlm_jax.train.run import build_run, data_seed
from tlm_jax.train.state import create_state


@dataclass(frozen=True)
class Budget:
    """How much of a preset the sparse-pretraining experiments spend.

    ``steps``: pretraining steps of every run (0 = the preset's ``pretrain_steps``), with a
    linear warmup over ``warmup_fraction`` of them (SLTrain's recipe: about 10 %);
    ``seeds``: fine-tuning seeds (empty = the preset's); ``timing_steps`` x ``timing_rounds``:
    the round-robin train-step timing of the variants in one process.
    """

    steps: int = 0
    seeds: tuple[int, ...] = ()
    eval_every: int = 100
    warmup_fraction: float = 0.1
    task: str = "ag_news"
    timing_steps: int = 10
    timing_rounds: int = 3


# cpu: a few hundred steps and two AG News seeds, so a whole experiment takes minutes.
BUDGETS: dict[str, Budget] = {
    "cpu": Budget(steps=300, seeds=(0, 1), eval_every=50),
    "paper": Budget(eval_every=1000),
}


def budget_for(preset: C.Preset) -> Budget:
    """The :class:`Budget` of ``preset`` (its own steps/seeds where the budget leaves them 0)."""
    b = BUDGETS.get(preset.name, Budget())
    return Budget(steps=b.steps or preset.pretrain_steps, seeds=b.seeds or preset.seeds,
                  eval_every=b.eval_every, warmup_fraction=b.warmup_fraction, task=b.task,
                  timing_steps=b.timing_steps, timing_rounds=b.timing_rounds)


def budget_overrides(budget: Budget) -> tuple[str, ...]:
    """Overrides every run of the experiment shares on top of the preset's pretraining recipe."""
    warmup = max(1, round(budget.steps * budget.warmup_fraction))
    return (f"train.eval_every={budget.eval_every}", f"optim.warmup_steps={warmup}")


def variant(base: C.PretrainSpec, kind: str, extra: tuple[str, ...]) -> C.PretrainSpec:
    """``base`` plus ``extra`` overrides, named ``<base>-<kind>-x<hash of extra>``."""
    tag = hashlib.sha256(json.dumps(list(extra)).encode()).hexdigest()[:6]
    return C.PretrainSpec(f"{base.name}-{kind}-x{tag}", (*base.overrides, *extra))


def model_hidden(spec: C.PretrainSpec) -> int:
    """The hidden size the spec's overrides resolve to."""
    return load_config(None, list(spec.overrides)).model.hidden


def val_curve(workdir: Path) -> list[tuple[int, float]]:
    """``(step, validation MLM loss)`` of a pretraining run."""
    return [(int(r["step"]), float(r["mlm_loss"])) for r in read_metrics(workdir, "val")
            if "mlm_loss" in r]


def step_times(specs: dict[str, C.PretrainSpec], root: Path, steps: int, rounds: int
               ) -> dict[str, dict[str, float]]:
    """Seconds per train step of each spec, timed round robin in one process.

    Every variant is compiled and warmed up first; then each round times ``steps`` steps of
    every variant in turn, so load from other processes hits them alike. Returns the median
    and all rounds per variant (``{}`` when ``rounds`` is 0); cached under ``root/timing``
    (keyed by the specs).
    """
    if rounds <= 0:
        return {}
    key = hashlib.sha256(json.dumps({k: list(s.overrides) for k, s in specs.items()}
                                    | {"steps": steps, "rounds": rounds}).encode()
                         ).hexdigest()[:12]
    path = Path(root) / "timing" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    live = {}
    for name, spec in specs.items():
        run = build_run(load_config(None, list(spec.overrides)), log=lambda _: None)
        with jax.set_mesh(run.mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
            state, shardings = create_state(run.model, run.tx, run.mesh, 0, run.cfg.data.max_len)
            fns = compile_steps(run, shardings)
            ds = make_dataset(run.train_source, run.cfg.train.batch_size, seed=data_seed(run.cfg))
            batch = fns.prep(ds[0])
            for _ in range(2):  # compile + one warm step
                state, m = fns.train(state, batch)
            jax.block_until_ready(m)
        live[name] = [run, state, fns, batch]
    rounds_s: dict[str, list[float]] = {k: [] for k in specs}
    for _ in range(rounds):
        for name, entry in live.items():
            run, state, fns, batch = entry
            with jax.set_mesh(run.mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
                t0 = time.perf_counter()
                for _ in range(steps):
                    state, m = fns.train(state, batch)
                jax.block_until_ready(m)
                rounds_s[name].append((time.perf_counter() - t0) / steps)
            entry[1] = state
    out = {k: {"median_s": statistics.median(v), "rounds_s": v} for k, v in rounds_s.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


def best_step_s(timing: dict[str, dict[str, Any]], name: str) -> float | None:
    """The fastest round's seconds per step of ``name``: under load from other processes the
    least disturbed round is the best estimate of the step's own cost."""
    return min(timing[name]["rounds_s"]) if name in timing else None


def run_memory(workdir: Path) -> dict[str, Any]:
    """``tlm mem``'s dense-vs-configured comparison for a run's config (one device)."""
    cfg = read_config(Path(workdir) / "config.json")
    mesh = {"data": 1, "fsdp": 1, "tensor": 1}
    if cfg.model.linear == "dense":
        return memory_report(cfg, mesh, 1)
    return linear_comparison(cfg, mesh, 1)


def finetune_runs(preset: C.Preset, root: Path, runs: dict[str, tuple[C.PretrainSpec, Path]],
                  task: str, seeds: list[int]) -> dict[str, dict[str, Any]]:
    """Dense fine-tuning of every pretrained run on ``task`` (same seeds and splits)."""
    return {k: C.run_finetune(preset, root, f"{spec.name}__{task}", task, seeds, pretrained=wd)
            for k, (spec, wd) in runs.items()}


def twin_finetune(preset: C.Preset, root: Path, dense: tuple[C.PretrainSpec, Path], task: str,
                  seeds: list[int]) -> dict[str, Any]:
    """The random-init twin of the (dense) architecture: the no-pretraining reference."""
    spec, wd = dense
    return C.run_finetune(preset, root, f"twin-{spec.name}__{task}", task, seeds, twin_of=wd)


def context_lines(ft: dict[str, dict[str, Any]], twin: dict[str, Any], task: str,
                  steps: int) -> list[str]:
    """Markdown lines placing the fine-tuned accuracies next to random init and TF-IDF."""
    dense = ft["dense"]
    base = dense.get("baseline")
    lines = [f"Random-init twin (no pretraining, the same dense architecture, seeds and splits): "
             f"{C.fmt_ci(twin['accuracy'])}"
             + (f"; TF-IDF + LR: {C.fmt_ci(base['accuracy'])}." if base else ".")]
    gap = paired_gap(dense["per_seed"], twin["per_seed"])
    if gap["mean"] < 0:
        lines.append(f"At {steps} pretraining steps the dense-pretrained model fine-tunes "
                     f"{-gap['mean'] * 100:.1f} ± {gap['ci95'] * 100:.1f} points *below* random "
                     "init (the preset's full pretraining budget is far longer), so a sparse run "
                     "that beats the dense one has hurt the initialisation less; it has not been "
                     f"shown to learn more. Differences on {task} are read in that light.")
    return lines


def plot_curves(ax: Any, curves: dict[str, list[tuple[int, float]]]) -> None:
    """Validation MLM loss from the first evaluation after step 0 (the initial ~9 nats would
    flatten the differences)."""
    for k, curve in curves.items():
        pts = [(s, v) for s, v in curve if s > 0]
        ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", ms=3, label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("validation MLM loss")
    ax.legend()


def machine_line() -> str:
    """Where the wall-clock numbers came from (the machine is shared with other jobs)."""
    env = C.environment()
    load = env.get("loadavg")
    return (f"Machine: {env['cpu_count']} CPU cores shared with other jobs (load average "
            f"{', '.join(f'{x:.1f}' for x in load) if load else 'n/a'} when this report was "
            "written): wall-clock seconds are not idle-machine speeds; step-time ratios come from "
            "round-robin timing in one process.")


def mib(b: float) -> str:
    """Bytes as ``"1.23 MiB"`` (``"12.3 KiB"`` below one MiB)."""
    return f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 2**10:.1f} KiB"


def run_experiment(args: argparse.Namespace, collect: Callable[..., Any],
                   render: Callable[..., tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The SLTrain / SPDF ``run``: the preset's budget (``--tasks``: its first task), the
    seeds, then ``collect(preset, runs, budget, seeds)`` and ``render(out, preset, budget,
    seeds, workdir)`` into ``--workdir``."""
    preset = C.PRESETS[args.preset]
    budget = budget_for(preset)
    if args.tasks:
        budget = dataclasses.replace(budget, task=args.tasks.split(",")[0])
    seeds = C.parse_seeds(args.seeds, budget.seeds)
    return C.write_experiment(args.workdir, lambda: collect(preset, C.runs_dir(args), budget, seeds),
                              lambda out, wd: render(out, preset, budget, seeds, wd))
