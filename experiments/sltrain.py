"""Experiment: SLTrain (sparse + low-rank) vs dense pretraining at equal steps.

    python -m experiments.sltrain --workdir DIR [--preset cpu|paper] [--runs-dir RUNS] [--seeds 0,1]

The preset's shallow model is pretrained twice -- same documents, tokenizer, batch order,
learning rate and steps -- with dense projections and with SLTrain projections
(``model.linear=sltrain``: ``W = (α/r)·B·A + S`` with a fixed random support; rank = hidden/4,
α/r = 0.25, density 0.03: the paper's 60M ratios). Reported: validation MLM loss, parameter
and AdamW-state memory (``tlm mem``'s comparison), train-step time (both in one process,
round robin) and accuracy on the budget's task after dense fine-tuning (the SLTrain run is
densified), paired by seed. See /work/shared/methods/sltrain.md for the method.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from experiments import common as C
from experiments import sparse_runs as S
from tlm_jax.tasks.finetune import paired_gap

DENSITY = 0.03


def sltrain_overrides(hidden: int) -> tuple[str, ...]:
    """rank = hidden/4, α = rank/4 (α/r = 0.25), δ = 0.03: the 60M recipe's ratios."""
    rank = max(1, hidden // 4)
    return ("model.linear=sltrain", f"model.sltrain_rank={rank}",
            f"model.sltrain_alpha={rank / 4}", f"model.sltrain_density={DENSITY}")


def collect(preset: C.Preset, root: Path, budget: S.Budget, seeds: list[int]) -> dict[str, Any]:
    """Run (or load) both pretraining runs, their fine-tunes, the timing and the memory sizes."""
    extra = S.budget_overrides(budget)
    dense = S.variant(C.pretrain_spec(preset, steps=budget.steps), "dense", extra)
    dense_wd = C.run_pretrain(dense, root, budget.steps)
    tok = str(dense_wd / "tokenizer.json")
    sl_base = C.pretrain_spec(preset, steps=budget.steps, tokenizer=tok)
    sl = S.variant(sl_base, "sltrain", (*extra, *sltrain_overrides(S.model_hidden(sl_base))))
    sl_wd = C.run_pretrain(sl, root, budget.steps)
    runs = {"dense": (dense, dense_wd), "sltrain": (sl, sl_wd)}
    C.log("timing train steps (round robin)")
    timing = S.step_times({k: spec for k, (spec, _) in runs.items()}, root,
                          budget.timing_steps, budget.timing_rounds)
    ft = S.finetune_runs(preset, root, runs, budget.task, seeds)
    twin = S.twin_finetune(preset, root, runs["dense"], budget.task, seeds)
    return {"runs": {k: {"spec": spec.name, "overrides": list(spec.overrides),
                         "pretrain": C.pretrain_summary(wd), "curve": S.val_curve(wd)}
                     for k, (spec, wd) in runs.items()},
            "memory": S.run_memory(sl_wd), "timing": timing, "finetune": ft, "twin": twin,
            "gap": paired_gap(ft["sltrain"]["per_seed"], ft["dense"]["per_seed"]),
            "sltrain_settings": dict(o.split("=", 1) for o in sltrain_overrides(
                S.model_hidden(sl_base)))}


def render(out: dict[str, Any], preset: C.Preset, budget: S.Budget, seeds: list[int],
           workdir: Path) -> tuple[str, dict[str, Any]]:
    """report.md text, report.json data, and ``sltrain.png``."""
    plt = C.plt()
    mem, dmem = out["memory"], out["memory"]["dense"]
    runs, ft, gap, timing = out["runs"], out["finetune"], out["gap"], out["timing"]
    task = budget.task

    def final(k: str, key: str = "mlm_loss") -> float | None:
        return (runs[k]["pretrain"].get("final_val") or {}).get(key)

    rows = []
    for k, m in (("dense", dmem), ("sltrain", mem)):
        b = m["bytes"]
        loss, acc = final(k), final(k, "mlm_accuracy")
        rows.append([k, f"{m['parameters']:,}", f"{m['projection_parameters']:,}",
                     S.mib(b["params"]["total"]), S.mib(b["opt_state"]["total"]),
                     S.mib(b["other"]["total"]), S.mib(b["total"]["total"]),
                     f"{loss:.3f}" if loss is not None else "n/a",
                     f"{acc * 100:.1f}" if acc is not None else "n/a",
                     f"{S.best_step_s(timing, k) * 1e3:.0f}" if k in timing else "n/a",
                     f"{runs[k]['pretrain'].get('seconds')}",
                     C.fmt_ci(ft[k]["accuracy"])])
    ratio = {key: mem["bytes"][key]["total"] / dmem["bytes"][key]["total"]
             for key in ("params", "opt_state", "total")}
    proj_ratio = mem["projection_parameters"] / dmem["projection_parameters"]
    time_ratio = (S.best_step_s(timing, "sltrain") / S.best_step_s(timing, "dense")
                  if timing else None)
    dl, sl_loss = final("dense"), final("sltrain")
    st = out["sltrain_settings"]
    md = [f"# SLTrain vs dense pretraining ({preset.name} preset)", "",
          f"The shallow model pretrained for {budget.steps} steps with dense projections and "
          f"with SLTrain projections (rank {st['model.sltrain_rank']}, α "
          f"{st['model.sltrain_alpha']}, density {st['model.sltrain_density']}; attention "
          "q/k/v/out and MLP in/out; embeddings and MLM head dense), same data, tokenizer, "
          "batch order and learning rate. Memory is the unsharded train state from abstract "
          "shapes (`tlm mem`); step time is the fastest of "
          f"{budget.timing_rounds} rounds of {budget.timing_steps} steps, both variants in one "
          "process, round robin (all rounds in report.json). Fine-tuning: "
          f"{task}, dense for both (SLTrain densified to W = (α/r)BA + S), accuracy mean "
          f"± 95 % CI over seeds {seeds}; the gap is paired by seed.", "",
          C.md_table(["pretraining", "params", "projection params", "params mem",
                      "AdamW mem", "buffers", "state total", "val MLM loss", "val MLM acc %",
                      "step ms", "pretrain wall s", f"{task} acc %"], rows), "",
          S.machine_line(), "",
          *S.context_lines(ft, out["twin"], task, budget.steps), "",
          "## Setup", "",
          f"- Dense run `{runs['dense']['spec']}` (later keys win): "
          f"`{' '.join(runs['dense']['overrides'])}`",
          f"- SLTrain run: the same plus the dense run's tokenizer and "
          f"`{' '.join(k + '=' + v for k, v in st.items())}`.", "",
          "## Findings", "",
          f"- **Memory**: SLTrain keeps {proj_ratio * 100:.1f} % of the projection parameters "
          f"(r(m+n) + δmn vs mn), so params are {ratio['params'] * 100:.1f} % and AdamW state "
          f"{ratio['opt_state'] * 100:.1f} % of dense; the whole train state is "
          f"{ratio['total'] * 100:.1f} % (the int32 support adds {S.mib(mem['bytes']['other']['total'])}). "
          "At this size the dense embedding table holds most parameters, so the whole-model "
          "saving is far below the paper's (whose models are dominated by their linears).",
          f"- **Validation MLM loss** after {budget.steps} steps: dense {dl:.3f}, SLTrain "
          f"{sl_loss:.3f} ({sl_loss - dl:+.3f})." if dl is not None and sl_loss is not None
          else "- Validation loss: n/a.",
          f"- **Step time**: SLTrain {time_ratio:.2f}x dense (it rebuilds each dense kernel "
          "per step, as the reference implementation does; no sparse kernel on CPU)."
          if time_ratio is not None else "- Step time: not measured.",
          f"- **{task} after dense fine-tuning**: SLTrain-pretrained "
          f"{C.fmt_ci(ft['sltrain']['accuracy'])} vs dense-pretrained "
          f"{C.fmt_ci(ft['dense']['accuracy'])}; paired gap {C.fmt_ci(gap)} points: "
          f"{C.verdict(gap)} (n = {gap.get('n')}).", "",
          "![loss, memory and accuracy](sltrain.png)"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    S.plot_curves(axes[0], {k: runs[k]["curve"] for k in ("dense", "sltrain")})
    parts = [("params", "params"), ("opt_state", "AdamW"), ("other", "buffers")]
    for i, m in enumerate((dmem, mem)):
        bottom = 0.0
        for j, (key, label) in enumerate(parts):
            val = m["bytes"][key]["total"] / 2**20
            axes[1].bar(i, val, bottom=bottom, color=f"C{j}", label=label if i == 0 else None)
            bottom += val
    axes[1].set_xticks([0, 1], ["dense", "sltrain"])
    axes[1].set_ylabel("train state (MiB)")
    axes[1].set_ylim(0, dmem["bytes"]["total"]["total"] / 2**20 * 1.3)
    axes[1].legend(fontsize=8, ncol=3, loc="upper center")
    accs = [ft["dense"]["accuracy"], ft["sltrain"]["accuracy"], out["twin"]["accuracy"]]
    axes[2].bar([0, 1, 2], [a["mean"] * 100 for a in accs],
                yerr=[a["ci95"] * 100 for a in accs], capsize=4, color=["C0", "C1", "C7"])
    axes[2].set_xticks([0, 1, 2], ["dense-pretrained", "sltrain-pretrained", "random init"])
    axes[2].set_ylabel(f"{task} test accuracy (%)")
    axes[2].tick_params(axis="x", labelsize=8)
    fig.suptitle(f"SLTrain vs dense ({preset.name} preset, {budget.steps} steps, "
                 f"{len(seeds)} seeds)")
    fig.tight_layout()
    fig.savefig(workdir / "sltrain.png", dpi=110)
    plt.close(fig)
    data = {"preset": preset.name, "steps": budget.steps, "task": task, "seeds": seeds,
            "sltrain_settings": st,
            "runs": {k: {"spec": r["spec"], "pretrain": r["pretrain"], "val_curve": r["curve"],
                         "step_seconds": timing.get(k)}
                     for k, r in runs.items()},
            "memory": {"dense": dmem, "sltrain": {k: v for k, v in mem.items() if k != "dense"},
                       "ratios": ratio | {"projection_parameters": proj_ratio}},
            "step_time_ratio": time_ratio,
            "finetune": {k: C.slim(v) for k, v in ft.items()}, "gap": gap,
            "random_init_twin": C.slim(out["twin"]),
            "environment": C.environment()}
    return "\n".join(md), data


def run(args: argparse.Namespace) -> None:
    S.run_experiment(args, collect, render)


if __name__ == "__main__":
    C.main_wrapper(run, __doc__ or "")
