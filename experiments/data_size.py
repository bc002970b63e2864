"""Experiment 2: the pretraining gap as a function of the pretraining subset size.

    python -m experiments.data_size --workdir DIR [--preset cpu|paper] [--runs-dir RUNS]

The shallow model is pretrained for the same number of steps on random
Wikipedia subsets of log-spaced sizes (all runs share one tokenizer, the one
trained on the largest subset, so only the pretraining data differs), then
fine-tuned on each task; the gap to the shared random-init twin is paired by
seed (mean ± 95 % CI).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from experiments import common as C


def collect(preset: C.Preset, root: Path, tasks: list[str], seeds: list[int],
            sizes: list[int] | None = None) -> dict[str, Any]:
    """Pretrain every size and fine-tune each on every task (finished sub-runs are reused)."""
    gap_spec, gap_run = C.gap_pretrain(preset, root)
    tok = str(gap_run / "tokenizer.json")
    out: dict[str, Any] = {"sizes": {}, "twin_of": gap_spec.name, "gap_spec": gap_spec}
    for n in sizes or list(preset.data_sizes):
        spec = C.size_spec(preset, n, tok)
        run = C.run_pretrain(spec, root, C.size_steps(preset))
        out["sizes"][n] = {"spec": spec.name, "run": str(run), "pretrain": C.pretrain_summary(run),
                           "tasks": {t: C.pair(preset, root, spec, run, t, seeds,
                                               twin_spec=gap_spec) for t in tasks}}
    return out


def render(out: dict[str, Any], preset: C.Preset, seeds: list[int], tasks: list[str],
           workdir: Path) -> tuple[str, dict[str, Any]]:
    plt = C.plt()
    sizes = sorted(out["sizes"], key=int)
    header = ["docs", "train tokens", "val MLM loss"]
    for t in tasks:
        header += [f"{t} pretrained acc", f"{t} gap (pts)"]
    rows = []
    for n in sizes:
        s = out["sizes"][n]
        fv = (s["pretrain"].get("final_val") or {}).get("mlm_loss")
        row = [n, f"{s['pretrain'].get('train_tokens') or 0:,}",
               f"{fv:.3f}" if fv is not None else "n/a"]
        for t in tasks:
            r = s["tasks"][t]
            row += [C.fmt_ci(r["pretrained"]["accuracy"]),
                    C.fmt_ci(r["gap"]) + (" *" if C.outside_ci(r["gap"]) else "")]
        rows.append(row)
    twin_rows = []
    for t in tasks:
        r = out["sizes"][sizes[0]]["tasks"][t]
        twin_rows.append([t, C.fmt_ci(r["random"]["accuracy"]),
                          C.fmt_ci(r["pretrained"]["baseline"]["accuracy"])])
    md = [f"# Gap vs pretraining data size ({preset.name} preset)", "",
          f"The shallow model pretrained for {C.size_steps(preset)} steps (batch "
          f"{preset.pretrain_batch}) on random Wikipedia subsets of each size, all with one "
          "shared tokenizer; fine-tuned on each task. Gap = pretrained − random-init twin, "
          f"paired by seed, mean ± 95 % CI over {len(seeds)} seeds, in accuracy points "
          "(* = CI excludes 0). Smaller subsets are repeated for more epochs (same steps).", "",
          C.md_table(header, rows), "",
          "Random-init twin and TF-IDF + LR (same splits) for reference:", "",
          C.md_table(["task", "random-init acc", "TF-IDF+LR acc"], twin_rows), "",
          "## Findings", ""]
    for t in tasks:
        gaps = [out["sizes"][n]["tasks"][t]["gap"]["mean"] for n in sizes]
        mono = all(b >= a - 1e-9 for a, b in zip(gaps, gaps[1:], strict=False))
        trend = "grows monotonically" if mono else (
            "is larger for the largest than the smallest subset" if gaps[-1] > gaps[0]
            else "does not grow with the subset size")
        md.append(f"- {t}: the gap {trend} "
                  f"({', '.join(f'{n}: {g * 100:+.1f}' for n, g in zip(sizes, gaps, strict=True))}"
                  " pts). Differences between neighbouring sizes are within the CIs unless the "
                  "intervals in the table separate.")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for t in tasks:
        g = [out["sizes"][n]["tasks"][t]["gap"] for n in sizes]
        axes[0].errorbar([int(n) for n in sizes], [x["mean"] * 100 for x in g],
                         yerr=[x["ci95"] * 100 for x in g], marker="o", capsize=3, label=t)
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("pretraining documents")
    axes[0].set_ylabel("gap: pretrained − random (accuracy pts)")
    axes[0].set_title("Pretraining gap vs data size (95% CI)")
    axes[0].legend(fontsize=8)
    losses = [(out["sizes"][n]["pretrain"].get("final_val") or {}).get("mlm_loss") for n in sizes]
    axes[1].plot([int(n) for n in sizes], losses, marker="o")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("pretraining documents")
    axes[1].set_ylabel("final validation MLM loss")
    axes[1].set_title("Pretraining loss")
    fig.tight_layout()
    fig.savefig(workdir / "data_size.png", dpi=120)
    plt.close(fig)
    md += ["", "![gap vs size](data_size.png)"]
    data = {"preset": preset.name, "seeds": seeds, "tasks": tasks, "twin_of": out["twin_of"],
            "sizes": {str(n): {"spec": out["sizes"][n]["spec"],
                               "pretrain": out["sizes"][n]["pretrain"],
                               "tasks": {t: {"pretrained": C.slim(r["pretrained"]),
                                             "random_accuracy": r["random"]["accuracy"],
                                             "gap": r["gap"], "gap_macro_f1": r["gap_macro_f1"]}
                                         for t, r in out["sizes"][n]["tasks"].items()}}
                      for n in sizes},
            "environment": C.environment()}
    return "\n".join(md), data


def run(args: argparse.Namespace) -> None:
    preset = C.PRESETS[args.preset]
    seeds = C.parse_seeds(args.seeds, preset.seeds)
    tasks, missing = C.available_tasks(args.tasks.split(",") if args.tasks
                                       else list(preset.size_tasks))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = collect(preset, C.runs_dir(args), tasks, seeds)
    md, data = render(out, preset, seeds, tasks, workdir)
    if missing:
        md += "\n" + "\n".join(f"- {t}: skipped ({why})" for t, why in missing.items())
    C.write_report(workdir, md, data)


if __name__ == "__main__":
    C.main_wrapper(run, __doc__ or "")
