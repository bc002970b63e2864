"""Continual pretraining and the stability gap (Guo et al., arXiv 2406.14833).

    python -m experiments.continual --workdir DIR [--preset cpu|paper] [--runs-dir RUNS]

A base model is pretrained on Wikipedia (the preset's shallow model and recipe,
shorter). It is then continually pretrained on a new corpus (WikiText-2 paragraphs,
packed) for the same number of steps under five data recipes, each with a fresh
optimizer, 10 % re-warmup and cosine re-decay (the paper's schedule), and
evaluated every few steps on the new corpus (``val``) and on the old one
(``val_old``):

* ``baseline`` -- the whole new corpus, about one epoch;
* ``replay``   -- the same with 10 % of every epoch replayed from the old corpus;
* ``I``        -- a random quarter of the new corpus, four epochs (strategy I);
* ``I+II``     -- the lowest-perplexity quarter (bigram model fitted on the new
  corpus's validation text), four epochs (strategies I and II);
* ``I+II+III`` -- that quarter, each epoch 82 % new / 18 % old, resampled per epoch
  (all three strategies).

The report tabulates final old/new losses, the size and place of the dip below the
step-0 value (:func:`tlm_jax.eval.stability.stability_gap`) for every curve, mean ±
95 % CI over seeds, and plots the curves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from experiments import common as C
from tlm_jax.eval.metrics import t_quantile_975
from tlm_jax.eval.stability import stability_gap
from tlm_jax.train.metrics import read_metrics

WIKITEXT_GLOB = "$TLM_DATA_DIR/wikitext2_v1_tokenized/*.txt.gz"


@dataclass(frozen=True)
class Settings:
    """Sizes of the continual experiment (model, lr, batch and vocabulary come from the preset)."""

    base_steps: int  # pretraining steps of the base (old-corpus) model
    steps: int  # steps of every continual run (same compute for every recipe)
    seeds: tuple[int, ...] = (0, 1)
    eval_every: int = 5
    eval_batches: int = 3
    warmup_fraction: float = 0.1  # the paper: cosine with 10 % warmup
    lr_scale: float = 1.0  # continual peak lr = preset.pretrain_lr * lr_scale
    subset_epochs: int = 4  # strategy I: the pool is steps*batch*(max_len-2)/subset_epochs tokens
    replay: float = 0.10  # the paper's "10 % replay" baseline
    mixture_replay: float = 0.18  # strategy III: Llama's non-CC/C4 share (82 % new)
    min_doc_tokens: int = 16  # documents (headings) shorter than this never enter a subset
    new_source: str = "lines"
    new_paths: tuple[str, ...] = (WIKITEXT_GLOB,)
    new_packing: str = "pack"
    new_val_docs: int = 300
    # Tests: overrides replacing the preset's base run (e.g. a synthetic corpus) and the
    # new corpus; empty = the preset's recipe and WikiText-2.
    base_overrides: tuple[str, ...] = ()
    new_overrides: tuple[str, ...] = ()
    recipes: tuple[str, ...] = ("baseline", "replay", "I", "I+II", "I+II+III")
    gap_tol: dict[str, float] = field(default_factory=lambda: {"loss": 0.02, "accuracy": 0.005})


SETTINGS: dict[str, Settings] = {
    # The base is pretrain_gap's shallow run (same recipe and steps, so a shared --runs-dir
    # reuses it); ~150 steps of 32 x 128 tokens is one epoch of the 597k-token WikiText-2 pool.
    "cpu": Settings(base_steps=C.PRESETS["cpu"].pretrain_steps, steps=150),
    "paper": Settings(base_steps=100_000, steps=20_000, seeds=(0, 1, 2), eval_every=250,
                      eval_batches=10),
}


def base_spec(preset: C.Preset, s: Settings) -> C.PretrainSpec:
    """The old-corpus model: the preset's shallow-model recipe for ``s.base_steps`` steps."""
    if s.base_overrides:
        name = "continual-base-" + hashlib.sha256(json.dumps(s.base_overrides).encode()
                                                  ).hexdigest()[:8]
        return C.PretrainSpec(name, tuple(s.base_overrides))
    return C.pretrain_spec(preset, steps=s.base_steps)


def subset_budget(preset: C.Preset, s: Settings) -> int:
    """Token budget of the strategy-I/II pool: a run's training tokens / ``subset_epochs``."""
    return math.ceil(s.steps * preset.pretrain_batch * (preset.max_len - 2) / s.subset_epochs)


def recipe_overrides(recipe: str, preset: C.Preset, s: Settings) -> list[str]:
    """``continual.*`` overrides of one data recipe."""
    budget = subset_budget(preset, s)
    sub = [f"continual.select_tokens={budget}", f"continual.select_min_tokens={s.min_doc_tokens}"]
    table = {
        "baseline": [],
        "replay": [f"continual.replay={s.replay}"],
        "I": ["continual.select=random", *sub],
        "I+II": ["continual.select=ppl", "continual.reference=val", *sub],
        "I+II+III": ["continual.select=ppl", "continual.reference=val", *sub,
                     f"continual.replay={s.mixture_replay}", "continual.mixture=dynamic"],
    }
    if recipe not in table:
        raise ValueError(f"unknown recipe {recipe}")
    return table[recipe]


def continual_spec(preset: C.Preset, s: Settings, base: Path, recipe: str, seed: int
                   ) -> C.PretrainSpec:
    """One continual run: ``recipe`` from ``base`` with training seed ``seed``."""
    lr = preset.pretrain_lr * s.lr_scale
    new = list(s.new_overrides) or [
        f"data.source={s.new_source}", f"data.paths={json.dumps(list(s.new_paths))}",
        f"data.val_docs={s.new_val_docs}", f"data.packing={s.new_packing}"]
    # The preset's objective/optimizer choices (e.g. its masking rate, Adam b2) carry over;
    # the architecture comes from the base run and the data are the new corpus's.
    extra = [o for o in getattr(preset, "pretrain_extra", ()) if not o.startswith(("data.", "model."))]
    ov = [f"continual.init_from={Path(base).resolve()}", *new, *extra,
          f"data.max_len={preset.max_len}", f"train.batch_size={preset.pretrain_batch}",
          f"train.steps={s.steps}", f"train.seed={seed}", f"optim.lr={lr}",
          f"optim.warmup_steps={max(1, round(s.warmup_fraction * s.steps))}",
          "optim.schedule=cosine", f"train.eval_every={s.eval_every}",
          f"train.eval_batches={s.eval_batches}", f"train.checkpoint_every={s.steps}",
          "train.keep_checkpoints=1", "train.progress=false", f"train.log_every={s.eval_every}",
          "train.tensorboard=false", *recipe_overrides(recipe, preset, s)]
    tag = hashlib.sha256(json.dumps(ov).encode()).hexdigest()[:6]
    safe = recipe.replace("+", "-")
    return C.PretrainSpec(f"continual-{safe}-s{seed}-r{tag}", tuple(ov))


def curves(run: Path) -> dict[str, dict[str, list[float]]]:
    """``{"new": {...}, "old": {...}}``: steps, MLM loss and accuracy of both validation sets."""
    out = {}
    for key, split in (("new", "val"), ("old", "val_old")):
        # One record per step (the last): a run restarted by an older version of the
        # metrics logger could hold its step-0 evaluation twice.
        recs = sorted({r["step"]: r for r in read_metrics(run, split)}.values(),
                      key=lambda r: r["step"])
        out[key] = {"step": [r["step"] for r in recs],
                    "loss": [r["mlm_loss"] for r in recs],
                    "accuracy": [r["mlm_accuracy"] for r in recs]}
    return out


def analyse(cur: dict[str, dict[str, list[float]]], s: Settings) -> dict[str, Any]:
    """Stability-gap statistics of every curve of one run."""
    out = {}
    for corpus, c in cur.items():
        for metric in ("loss", "accuracy"):
            out[f"{corpus}_{metric}"] = stability_gap(
                c["step"], c[metric], higher_is_better=metric == "accuracy", tol=s.gap_tol[metric])
    return out


def collect(preset: C.Preset, s: Settings, root: Path) -> dict[str, Any]:
    """Run (or load) the base run and every recipe x seed; returns curves and statistics."""
    spec = base_spec(preset, s)
    steps = s.base_steps if not s.base_overrides else _steps_of(s.base_overrides)
    base = C.run_pretrain(spec, root, steps)
    out: dict[str, Any] = {"base": C.pretrain_summary(base), "base_spec": spec.name,
                           "recipes": {}}
    for recipe in s.recipes:
        runs = []
        for seed in s.seeds:
            cs = continual_spec(preset, s, base, recipe, seed)
            wd = C.run_pretrain(cs, root, s.steps)
            info = json.loads((wd / "data_info.json").read_text()).get("continual", {})
            cur = curves(wd)
            runs.append({"seed": seed, "run": str(wd), "spec": cs.name, "pool": info,
                         "curves": cur, "gap": analyse(cur, s),
                         "seconds": C.pretrain_summary(wd).get("seconds")})
        out["recipes"][recipe] = runs
    return out


def _steps_of(overrides: tuple[str, ...]) -> int:
    for o in overrides:
        if o.startswith("train.steps="):
            return int(o.split("=", 1)[1])
    raise ValueError("base_overrides must set train.steps")


def _ci(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    half = (t_quantile_975(len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "ci95": float(half), "n": len(v)}


def _fmt(d: dict[str, float], digits: int = 3, scale: float = 1.0) -> str:
    return f"{d['mean'] * scale:.{digits}f} ± {d['ci95'] * scale:.{digits}f}"


def summarise(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per recipe, mean ± CI over seeds of the final losses and the gap statistics."""
    table = {}
    for recipe, runs in out["recipes"].items():
        row: dict[str, Any] = {}
        for key in ("new_loss", "old_loss", "new_accuracy", "old_accuracy"):
            row[key] = {stat: _ci([r["gap"][key][stat] for r in runs])
                        for stat in ("start", "final", "gap", "worst_step", "recovery")}
            row[key]["dip_runs"] = sum(r["gap"][key]["dip"] for r in runs)
            row[key]["v_runs"] = sum(r["gap"][key]["v_shape"] for r in runs)
        pool = runs[0]["pool"]
        row["pool_tokens"] = pool.get("pool_tokens")
        row["pool_docs"] = pool.get("pool_docs")
        row["ppl_selected_mean"] = pool.get("ppl_selected_mean")
        row["ppl_all_median"] = pool.get("ppl_all_median")
        table[recipe] = row
    return table


def _plot(out: dict[str, Any], workdir: Path, title: str) -> None:
    plt = C.plt()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = (("old", "loss", "old corpus (Wikipedia) MLM loss"),
              ("new", "loss", "new corpus (WikiText-2) MLM loss"),
              ("old", "accuracy", "old corpus MLM accuracy"),
              ("new", "accuracy", "new corpus MLM accuracy"))
    for ax, (corpus, metric, label) in zip(axes.flat, panels, strict=True):
        for recipe, runs in out["recipes"].items():
            steps = runs[0]["curves"][corpus]["step"]
            vals = np.mean([r["curves"][corpus][metric] for r in runs], axis=0)
            ax.plot(steps, vals, label=recipe, lw=1.4)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("continual step")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(workdir / "stability_gap.png", dpi=120)
    plt.close(fig)


def render(out: dict[str, Any], preset: C.Preset, s: Settings, workdir: Path
           ) -> tuple[str, dict[str, Any]]:
    """``report.md`` text and ``report.json`` data."""
    table = summarise(out)
    base = out["base"]
    fv = (base.get("final_val") or {}).get("mlm_loss")
    rows = []
    for recipe, r in table.items():
        ol, nl, oa, na = r["old_loss"], r["new_loss"], r["old_accuracy"], r["new_accuracy"]
        tokens = s.steps * preset.pretrain_batch * (preset.max_len - 2)
        epochs = tokens / r["pool_tokens"] if r["pool_tokens"] else float("nan")
        rows.append([recipe, f"{r['pool_docs']:,} / {r['pool_tokens']:,}", f"{epochs:.1f}",
                     _fmt(nl["final"]), _fmt(ol["final"]), _fmt(ol["gap"]),
                     f"{ol['worst_step']['mean']:.0f}",
                     _fmt(oa["gap"], 1, 100), f"{oa['dip_runs']}/{len(s.seeds)}",
                     f"{oa['v_runs']}/{len(s.seeds)}", _fmt(na["gap"], 1, 100),
                     _fmt(na["final"], 1, 100)])
    start = table[next(iter(table))]
    md = [f"# Continual pretraining and the stability gap ({preset.name} preset)", "",
          f"Base: `{out['base_spec']}` ({base.get('steps')} steps on Wikipedia, validation MLM loss "
          f"{fv:.3f})." if fv is not None else f"Base: `{out['base_spec']}`.",
          f"Every recipe: {s.steps} continual steps of {preset.pretrain_batch} × {preset.max_len} "
          f"tokens on WikiText-2 paragraphs (packed), fresh AdamW, peak lr "
          f"{preset.pretrain_lr * s.lr_scale:g} after {s.warmup_fraction:.0%} warmup, cosine "
          f"decay; validation on both corpora every {s.eval_every} steps "
          f"({s.eval_batches} batches each). Mean ± 95 % CI over seeds {list(s.seeds)}.",
          f"At step 0 (the base model): old-corpus loss {start['old_loss']['start']['mean']:.3f}, "
          f"new-corpus loss {start['new_loss']['start']['mean']:.3f}, old accuracy "
          f"{start['old_accuracy']['start']['mean'] * 100:.1f} %, new accuracy "
          f"{start['new_accuracy']['start']['mean'] * 100:.1f} %.", "",
          C.md_table(["recipe", "pool docs / tokens", "epochs", "new loss (final)",
                      "old loss (final)", "old-loss rise (max − start)", "worst step",
                      "old-acc dip (pts)", "runs with old-acc dip", "V (dip then recovery)",
                      "new-acc dip (pts)", "new acc (final, %)"], rows), "",
          f"A dip counts when a curve gets worse than its step-0 value by more than "
          f"{s.gap_tol['accuracy'] * 100:.1f} accuracy points ({s.gap_tol['loss']} nats for "
          "losses); a V when it then improves by more than that from its worst point.", "",
          "Per seed (seeds " + ", ".join(str(x) for x in s.seeds) + "): old-loss rise / "
          "old-accuracy dip (pts) / new-accuracy dip (pts):", "",
          C.md_table(["recipe", *[f"seed {x}" for x in s.seeds]],
                     [[rc, *[f"{r['gap']['old_loss']['gap']:.3f} / "
                             f"{r['gap']['old_accuracy']['gap'] * 100:.1f} / "
                             f"{r['gap']['new_accuracy']['gap'] * 100:.1f}" for r in runs]]
                      for rc, runs in out["recipes"].items()]), "",
          "![curves](stability_gap.png)", "", "## Findings", ""]
    md += findings(table, s)
    _plot(out, workdir, f"Continual pretraining from a Wikipedia model onto WikiText-2 "
                        f"(mean of {len(s.seeds)} seeds)")
    data = {"preset": preset.name, "settings": asdict(s),
            "base": base, "summary": table,
            "runs": out["recipes"],
            "environment": C.environment()}
    return "\n".join(md), data


def findings(table: dict[str, Any], s: Settings) -> list[str]:
    """Plain statements of what the numbers show (no hard-coded outcome)."""
    lines = []
    b = table.get("baseline")
    if b:
        oa = b["old_accuracy"]
        lines.append(
            f"- Forgetting: continual pretraining on the new corpus raises the old-corpus loss by "
            f"{_fmt(b['old_loss']['gap'])} nats at its worst "
            f"(step {b['old_loss']['worst_step']['mean']:.0f}) "
            f"and ends at {_fmt(b['old_loss']['final'])} ({b['old_loss']['v_runs']}/{len(s.seeds)} "
            "runs recover part of it by the end).")
        lines.append(
            f"- Stability gap (baseline): old-corpus MLM accuracy dips {_fmt(oa['gap'], 1, 100)} pts "
            f"below the base model in {oa['dip_runs']}/{len(s.seeds)} runs and forms a V (recovers "
            f"afterwards) in {oa['v_runs']}/{len(s.seeds)}; new-corpus accuracy dips "
            f"{_fmt(b['new_accuracy']['gap'], 1, 100)} pts ({b['new_accuracy']['dip_runs']}/"
            f"{len(s.seeds)} runs) while its loss falls from "
            f"{b['new_loss']['start']['mean']:.3f} to {_fmt(b['new_loss']['final'])}.")
    ppl = next((r for r in table.values() if r.get("ppl_selected_mean")), None)
    if ppl:
        lines.append(f"- The perplexity-selected pool (strategy II) has mean bigram perplexity "
                     f"{ppl['ppl_selected_mean']:.0f} vs a median of {ppl['ppl_all_median']:.0f} "
                     "over all new-corpus documents: the documents most like the new corpus's "
                     "validation text.")
    for name, r in table.items():
        if name == "baseline" or not b:
            continue
        d_old = r["old_loss"]["final"]["mean"] - b["old_loss"]["final"]["mean"]
        d_new = r["new_loss"]["final"]["mean"] - b["new_loss"]["final"]["mean"]
        d_gap = r["old_accuracy"]["gap"]["mean"] - b["old_accuracy"]["gap"]["mean"]
        sep_old = _separated(r["old_loss"]["final"], b["old_loss"]["final"])
        sep_new = _separated(r["new_loss"]["final"], b["new_loss"]["final"])
        d_acc = r["new_accuracy"]["final"]["mean"] - b["new_accuracy"]["final"]["mean"]
        sep_acc = _separated(r["new_accuracy"]["final"], b["new_accuracy"]["final"])
        lines.append(
            f"- {name} vs baseline: final old-corpus loss {d_old:+.3f} "
            f"({'CIs separate' if sep_old else 'within the CIs'}), final new-corpus loss "
            f"{d_new:+.3f} ({'CIs separate' if sep_new else 'within the CIs'}), final new-corpus "
            f"accuracy {d_acc * 100:+.1f} pts ({'CIs separate' if sep_acc else 'within the CIs'}), "
            f"old-accuracy dip {d_gap * 100:+.1f} pts.")
    if b and len(table) > 1:
        others = {k: v for k, v in table.items() if k != "baseline"}
        better = [k for k, v in others.items()
                  if v["new_loss"]["final"]["mean"] < b["new_loss"]["final"]["mean"]
                  and _separated(v["new_loss"]["final"], b["new_loss"]["final"])]
        best = min(others, key=lambda k: others[k]["new_loss"]["final"]["mean"])
        lines.append(
            "- Against the paper (strategies raise domain performance and remove the dip): "
            + (f"{', '.join(better)} end with a lower new-corpus loss than the baseline beyond "
               "the CIs" if better else "no recipe ends with a lower new-corpus loss than the "
               f"baseline beyond the CIs (best of the others: {best}, "
               f"{others[best]['new_loss']['final']['mean']:.3f} vs "
               f"{b['new_loss']['final']['mean']:.3f})")
            + "; " + "; ".join(f"{k} still dips on old-corpus accuracy in "
                               f"{v['old_accuracy']['dip_runs']}/{len(s.seeds)} runs"
                               for k, v in others.items() if k != "replay") + ".")
    return lines


def _separated(a: dict[str, float], b: dict[str, float]) -> bool:
    return abs(a["mean"] - b["mean"]) > a["ci95"] + b["ci95"] and a["n"] > 1


def run_experiment(preset: C.Preset, s: Settings, workdir: Path, root: Path) -> dict[str, Any]:
    """Collect, render and write the report; returns the report data."""
    return C.write_experiment(workdir, lambda: collect(preset, s, root),
                              lambda out, wd: render(out, preset, s, wd))


def run(args: argparse.Namespace) -> None:
    preset = C.PRESETS[args.preset]
    s = SETTINGS[args.preset]
    if args.seeds:
        s = replace(s, seeds=tuple(C.parse_seeds(args.seeds, s.seeds)))
    C.enable_compile_cache(C.runs_dir(args))
    run_experiment(preset, s, Path(args.workdir), C.runs_dir(args))


if __name__ == "__main__":
    C.main_wrapper(run, __doc__ or "")
