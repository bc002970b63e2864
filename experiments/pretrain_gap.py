"""Experiment 1: what pretraining buys -- pretrained vs random-init twin on every task.

    python -m experiments.pretrain_gap --workdir DIR [--preset cpu|paper] [--runs-dir RUNS]

One shallow (BERT-1-like) model is pretrained with MLM on a Wikipedia subset;
it and its random-init twin (same architecture, same tokenizer, same
fine-tuning budget and seeds, same splits per seed) are fine-tuned on each
available task. The gap is the per-seed paired difference, reported as mean ±
95 % CI; the TF-IDF + logistic-regression baseline is on the same splits.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from experiments import common as C


def collect(preset: C.Preset, root: Path, tasks: list[str], seeds: list[int]
            ) -> dict[str, Any]:
    """Run (or load) the gap run and every pretrained/twin fine-tune."""
    spec, run = C.gap_pretrain(preset, root)
    return {"pretrain": C.pretrain_summary(run), "spec": spec.name,
            "tasks": {t: C.pair(preset, root, spec, run, t, seeds) for t in tasks}}


# What was tried on this machine before the cpu preset settled (same splits, 3 seeds), kept
# in the report so the negative result is read with its context.
CPU_HISTORY = """\
## Recipes tried on this machine (cpu preset history)

| pretraining (1 layer, hidden 128, 32 x 128) | MLM val | AG pre | AG rand | FewRel pre | FewRel rand |
|---|---|---|---|---|---|
| 600 steps, lr 1e-3, 15 % mask, [CLS] pool | 6.75 | 53.6 ± 19.0 | 65.6 ± 7.5 | 38.3 ± 29.6 | 54.9 ± 7.0 |
| 1,500 steps, lr 3e-3, 15 % mask, mean pool | 6.52 | 50.9 ± 12.1 | 70.2 ± 8.6 | 42.1 ± 6.0 | 59.2 ± 5.4 |
| 1,000 steps, 40 % masking, no dropout, b2 0.98, packed (probe) | 6.36 | 48.9 | 71.1 | - | - |
| 2,000 steps, same (probe; a 3,000-step schedule) | 6.33 | 61.8 | 71.1 | - | - |
| 4,000 steps, same (step-4,000 checkpoint of the run below) | 5.49 | 73.7 | 71.1 | - | - |
| **8,000 steps, same (the preset, table above)** | 4.96 | above | above | above | above |

Probe rows: AG News, seeds 0-2, the preset's fine-tuning recipe. A linear probe (logistic
regression on frozen, standardised mean-pooled features, 100 labels per class) tells the same
story: random-init features 43 %, after 1,000 steps with 15 % masking 43 %, with 40 % masking
50 %, after 2,000 steps 56 %. Below that level the pretrained word embeddings are ~4x larger than
a fresh initialisation but carry little class information, and fine-tuning cannot override that
noise with 100 labels per class, so pretraining *hurts*; pre-LN, packing or a 2-layer, 256-wide
model did not shorten the plateau per step. Between 2,000 and 4,000 steps the model leaves the
plateau (the preset run: validation MLM loss 6.26 at step 2,000 -> 5.49 at 4,000, accuracy
14 % -> 20 %) and the sign of the gap flips.
"""


def render(out: dict[str, Any], preset: C.Preset, seeds: list[int], missing: dict[str, str],
           workdir: Path) -> tuple[str, dict[str, Any]]:
    plt = C.plt()
    rows, verdicts = [], []
    for t, r in out["tasks"].items():
        pre, rnd, gap = r["pretrained"], r["random"], r["gap"]
        sig = C.outside_ci(gap) and gap["mean"] > 0
        verdicts.append((t, sig, gap))
        rows.append([t, C.fmt_ci(pre["accuracy"]), C.fmt_ci(rnd["accuracy"]),
                     C.fmt_ci(gap), C.verdict(gap),
                     C.fmt_ci(pre["macro_f1"]), C.fmt_ci(rnd["macro_f1"]),
                     C.fmt_ci(pre["baseline"]["accuracy"]),
                     f"{pre['split_sizes']['train']}/{pre['split_sizes']['val']}/"
                     f"{pre['split_sizes']['test']}"])
    ps = out["pretrain"]
    fv = (ps.get("final_val") or {}).get("mlm_loss")
    md = [f"# Pretraining gap ({preset.name} preset)", "",
          "Pretrained shallow model vs its random-init twin (identical architecture, tokenizer, "
          "fine-tuning recipe, seeds and data splits). Accuracies are test-set percentages, "
          f"mean ± 95 % CI over {len(seeds)} seeds (Student t); the gap is the per-seed paired "
          "difference pretrained − random. TF-IDF + LR is the baseline on the same splits.", "",
          C.md_table(["task", "pretrained acc", "random-init acc", "gap (pts)",
                      "pretraining", "pretrained F1", "random F1", "TF-IDF+LR acc",
                      "train/val/test"], rows), "",
          "## Setup", "",
          f"- Pretraining: `{out['spec']}` -- {ps.get('parameters'):,} parameters, "
          f"{ps.get('steps')} steps, {ps.get('train_docs')} Wikipedia documents "
          f"({ps.get('train_tokens'):,} tokens), final validation MLM loss "
          f"{fv:.3f}, {ps.get('seconds')} s." if fv is not None else
          f"- Pretraining: `{out['spec']}`",
          f"- Fine-tuning: `{' '.join(C.finetune_overrides(preset, 'ag_news')[:8])}`, per-task "
          f"split sizes {preset.tasks}; early stopping on the validation split; seeds {seeds} "
          "(the seed also draws the data split).",
          "", "## Findings", ""]
    for t, sig, gap in verdicts:
        if sig:
            md.append(f"- **{t}: reproduced** -- pretraining helps by {gap['mean'] * 100:.1f} "
                      f"± {gap['ci95'] * 100:.1f} points (CI excludes 0).")
        elif C.outside_ci(gap):
            md.append(f"- **{t}: not reproduced -- the opposite** at this budget: the pretrained "
                      f"model is {-gap['mean'] * 100:.1f} ± {gap['ci95'] * 100:.1f} points *worse* "
                      "than its random-init twin (CI excludes 0).")
        else:
            md.append(f"- **{t}: not reproduced at this budget** -- gap {gap['mean'] * 100:.1f} "
                      f"± {gap['ci95'] * 100:.1f} points, CI includes 0.")
    for t, why in missing.items():
        md.append(f"- {t}: skipped, data not available ({why}).")
    # Plot: grouped bars with CI error bars.
    tasks = list(out["tasks"])
    fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(tasks), 4))
    width = 0.27
    for i, (label, get) in enumerate((
            ("pretrained", lambda r: r["pretrained"]["accuracy"]),
            ("random init", lambda r: r["random"]["accuracy"]),
            ("TF-IDF + LR", lambda r: r["pretrained"]["baseline"]["accuracy"]))):
        vals = [get(out["tasks"][t]) for t in tasks]
        ax.bar([j + (i - 1) * width for j in range(len(tasks))], [v["mean"] * 100 for v in vals],
               width, yerr=[v["ci95"] * 100 for v in vals], capsize=3, label=label)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Pretrained vs random init ({preset.name} preset, {len(seeds)} seeds, 95% CI)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(workdir / "pretrain_gap.png", dpi=120)
    plt.close(fig)
    md += ["", "![accuracy by task](pretrain_gap.png)"]
    if preset.name == "cpu":
        md += ["", CPU_HISTORY]
    data = {"preset": preset.name, "seeds": seeds, "pretrain": ps, "missing_tasks": missing,
            "tasks": {t: {"pretrained": C.slim(r["pretrained"]), "random": C.slim(r["random"]),
                          "gap": r["gap"], "gap_macro_f1": r["gap_macro_f1"],
                          "gap_outside_ci": C.outside_ci(r["gap"])}
                      for t, r in out["tasks"].items()},
            "environment": C.environment()}
    return "\n".join(md), data


def run(args: argparse.Namespace) -> None:
    preset = C.PRESETS[args.preset]
    seeds = C.parse_seeds(args.seeds, preset.seeds)
    wanted = args.tasks.split(",") if args.tasks else list(preset.tasks)
    tasks, missing = C.available_tasks(wanted)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = collect(preset, C.runs_dir(args), tasks, seeds)
    md, data = render(out, preset, seeds, missing, workdir)
    C.write_report(workdir, md, data)


if __name__ == "__main__":
    C.main_wrapper(run, __doc__ or "")
