"""Train Once, Answer All: four data experiments in one pretraining run, and CPDT.

    python -m experiments.toaa --workdir DIR [--preset cpu|paper] [--runs-dir RUNS]

Four experiments share one pretraining run of the preset's shallow model on
Wikipedia (Bordt & Pawelczyk, arXiv 2509.23383), each owning a few sequences
written into the training stream (:mod:`tlm_jax.data.insertion`) and its own
metric against never-inserted controls (:mod:`tlm_jax.eval.interventions`):

* ``canaries``       -- random word sequences inserted 2 / 8 / 32 times (memorisation
  vs repetitions; exposure and AUC against 64 control sequences);
* ``canaries_early`` -- canaries inserted 8 times, only in the first 30 % of training
  (``random-range``; forgetting: compare with the uniform 8x group);
* ``facts``          -- fictional facts ("the favourite colour of velkor tamsin is red .")
  inserted 8 times; recall = log-probability of the object among the relation's
  candidates at the masked slot, against never-inserted control facts;
* ``facts_para``     -- paraphrases of the *same* facts; metric: recall probed with the
  paraphrase template. It shares knowledge with ``facts`` on purpose: the planted
  dependency the interaction check should find.

A control run (same data, no insertions) gives the loss comparison and the
never-inserted baseline. The non-interaction check is CPDT: short continual runs
from the control run's weights with no insertions (two data seeds: the noise row),
each experiment alone and all jointly; ``D[j][i] = Y_i^{j} - Y_i^{none}`` with
sign-flip permutation p-values over items (Bonferroni over off-diagonal entries).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from experiments import common as C
from experiments.toaa_probes import (
    SETTINGS,
    Settings,
    canary_table,
    experiments_for,
    fact_table,
    make_probes,
    outcomes,
    paired_effects,
    score_run,
)
from tlm_jax.data.insertion import write_experiments
from tlm_jax.data.tokenizer import load_tokenizer
from tlm_jax.eval.interventions import dependence_matrix
from tlm_jax.train.metrics import read_metrics

# ----------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------


def control_spec(preset: C.Preset, s: Settings) -> C.PretrainSpec:
    """The pretraining run without insertions (its tokenizer is everyone's)."""
    if s.base_overrides:
        name = "toaa-control-" + hashlib.sha256(json.dumps(s.base_overrides).encode()).hexdigest()[:8]
        return C.PretrainSpec(name, tuple(s.base_overrides))
    return C.pretrain_spec(preset, steps=s.steps, seed=s.seed)


def _tag(ov: list[str]) -> str:
    return hashlib.sha256(json.dumps(ov).encode()).hexdigest()[:6]


def full_spec(ctrl: C.PretrainSpec, control_run: Path, file: Path, s: Settings) -> C.PretrainSpec:
    """The control recipe with every experiment's insertions (same tokenizer, same data order)."""
    ov = [*ctrl.overrides, f"data.tokenizer={(control_run / 'tokenizer.json').resolve()}",
          f"interventions.file={file.resolve()}", f"interventions.seed={s.seed}"]
    return C.PretrainSpec(f"toaa-full-r{_tag(ov)}", tuple(ov))


def cpdt_spec(ctrl: C.PretrainSpec, control_run: Path, preset: C.Preset, s: Settings,
              condition: str, file: Path | None, seed: int) -> C.PretrainSpec:
    """A CPDT run: ``cpdt_steps`` of continual pretraining from the control run's weights."""
    # The control run's data, objective and optimizer settings; the architecture and
    # tokenizer come from the control run itself (continual.init_from).
    keep = ("data.", "objective.", "optim.b1", "optim.b2", "optim.eps", "optim.weight_decay",
            "optim.clip_norm")
    data = [o for o in ctrl.overrides if o.startswith(keep) and not o.startswith("data.tokenizer")]
    batch = next((o for o in ctrl.overrides if o.startswith("train.batch_size=")),
                 f"train.batch_size={preset.pretrain_batch}")
    ov = [f"continual.init_from={control_run.resolve()}", "continual.eval_old=false", *data, batch,
          f"train.steps={s.cpdt_steps}", f"train.seed={seed}",
          f"optim.lr={preset.pretrain_lr * s.cpdt_lr_scale}",
          f"optim.warmup_steps={s.cpdt_warmup}", f"train.eval_every={s.cpdt_steps}",
          "train.eval_batches=5", f"train.checkpoint_every={s.cpdt_steps}",
          "train.keep_checkpoints=1", "train.progress=false", "train.tensorboard=false",
          f"train.log_every={max(1, s.cpdt_steps // 4)}"]
    if file is not None:
        ov += [f"interventions.file={file.resolve()}", f"interventions.seed={s.seed}"]
    safe = condition.replace("_", "-")
    return C.PretrainSpec(f"toaa-cpdt-{safe}-r{_tag(ov)}", tuple(ov))


def _steps_of(spec: C.PretrainSpec) -> int:
    return int(next(o for o in spec.overrides if o.startswith("train.steps=")).split("=", 1)[1])


# ----------------------------------------------------------------------------
# Experiment
# ----------------------------------------------------------------------------


def collect(preset: C.Preset, s: Settings, root: Path) -> dict[str, Any]:
    """Control run, full run, CPDT runs; scores of every run."""
    ctrl = control_spec(preset, s)
    steps = _steps_of(ctrl)
    control = C.run_pretrain(ctrl, root, steps)
    probes = make_probes(load_tokenizer(control / "tokenizer.json"), s)
    specs_dir = root / "toaa_specs"
    full_file = write_experiments(experiments_for(probes, s, steps, s.experiments),
                                  specs_dir / f"full-{ctrl.name}.json")
    fs = full_spec(ctrl, control, full_file, s)
    full = C.run_pretrain(fs, root, steps)
    runs = {"control": control, "full": full}
    conditions: dict[str, tuple[tuple[str, ...], int]] = {"none": ((), s.seed)}
    if s.null_seed is not None:
        conditions["none_seed2"] = ((), s.null_seed)
    conditions.update({e: ((e,), s.seed) for e in s.experiments})
    conditions["joint"] = (s.experiments, s.seed)
    for cond, (names, seed) in conditions.items():
        file = None
        if names:
            file = write_experiments(
                experiments_for(probes, s, s.cpdt_steps, names, scale=s.cpdt_rep_scale),
                specs_dir / f"cpdt-{cond}-{ctrl.name}.json")
        spec = cpdt_spec(ctrl, control, preset, s, cond, file, seed)
        runs[f"cpdt:{cond}"] = C.run_pretrain(spec, root, s.cpdt_steps)
    scores = {k: score_run(v, probes, root) for k, v in runs.items()}
    items = {k.split(":", 1)[1]: {e: v for e, v in outcomes(sc, probes).items()
                                  if e in s.experiments}
             for k, sc in scores.items() if k.startswith("cpdt:")}
    dep = dependence_matrix(items, s.experiments, baseline="none")
    return {"runs": {k: str(v) for k, v in runs.items()}, "probes": probes, "scores": scores,
            "dependence": dep, "control": C.pretrain_summary(control),
            "full": C.pretrain_summary(full), "control_spec": ctrl.name, "steps": steps,
            "insertions": json.loads((full / "insertions.json").read_text())}


def _val_curve(run: str) -> tuple[list[int], list[float]]:
    recs = read_metrics(run, "val")
    return [r["step"] for r in recs], [r["mlm_loss"] for r in recs]


def render(out: dict[str, Any], preset: C.Preset, s: Settings, workdir: Path
           ) -> tuple[str, dict[str, Any]]:
    """``report.md`` text and ``report.json`` data, plus the plots."""
    p = out["probes"]
    full, ctrl = out["scores"]["full"], out["scores"]["control"]
    ct_full, ct_ctrl = canary_table(full, p, s), canary_table(ctrl, p, s)
    ft_full, ft_ctrl = fact_table(full), fact_table(ctrl)
    eff = paired_effects(full, ctrl, p, s)
    chance = float(np.mean([1.0 / len(p.candidates[f[1]]) for f in p.facts]))
    dep = out["dependence"]
    ins = out["insertions"]
    n_ins = sum(e["insertions"] for e in ins["experiments"])
    frac = n_ins / max(ins["stream_examples"], 1)
    fv_full = (out["full"].get("final_val") or {}).get("mlm_loss")
    fv_ctrl = (out["control"].get("final_val") or {}).get("mlm_loss")
    md = [f"# Train Once, Answer All ({preset.name} preset)", "",
          f"One pretraining run (`{out['control_spec']}` recipe, {out['steps']} steps) with four "
          f"experiments' sequences written into {n_ins} of its {ins['stream_examples']:,} training "
          f"examples ({frac:.1%}), and a control run without them (same data order, tokenizer "
          "and seeds).", "",
          "## Effect on training", "",
          f"Final validation MLM loss: with insertions {fv_full:.4f}, control {fv_ctrl:.4f} "
          f"(difference {fv_full - fv_ctrl:+.4f})." if fv_full is not None and fv_ctrl is not None
          else "Final validation losses: n/a.", "", "![loss curves](toaa_loss.png)", "",
          "## Each experiment's outcome (full run vs control run)", "",
          "Canaries: mean pseudo-log-likelihood (PLL, nats/token) against "
          f"{s.control_canaries} never-inserted control sequences; exposure "
          f"(max {ct_full['max_exposure']:.2f} bits) and AUC (0.5 = nothing learnt).", "",
          "The effect column compares each item with itself in the control run (which never saw "
          "it): per item (PLL − mean control PLL) in the full run minus the same in the control "
          "run; mean and sign-flip p-value over the group's items.", "",
          C.md_table(["group", "PLL − controls (full)", "exposure (full)", "AUC (full)",
                      "PLL − controls (control run)", "exposure (control run)",
                      "effect of insertion (p)"],
                     [[g, f"{ct_full[g]['contrast']:+.3f}", f"{ct_full[g]['exposure']:.2f}",
                       f"{ct_full[g]['auc']:.2f}", f"{ct_ctrl[g]['contrast']:+.3f}",
                       f"{ct_ctrl[g]['exposure']:.2f}",
                       f"{eff[g]['delta']:+.3f} (p={eff[g]['p']:.2g})"]
                      for g in ct_full if isinstance(ct_full[g], dict)]), "",
          "Facts: top-1 recall of the object among the relation's "
          f"{sorted({len(c) for c in p.candidates.values()})} candidates (chance "
          f"{chance * 100:.1f} %) and its mean log-probability; effect = per-fact log-probability "
          "contrast (vs control facts) in the full run minus the control run.",
          "",
          C.md_table(["probe", "inserted facts (full)", "control facts (full)",
                      "inserted facts (control run)", "effect of insertion (p)"],
                     [[k, f"{ft_full['inserted_' + k]['accuracy'] * 100:.1f} % / "
                          f"{ft_full['inserted_' + k]['logprob']:.2f}",
                       f"{ft_full['control_' + k]['accuracy'] * 100:.1f} % / "
                       f"{ft_full['control_' + k]['logprob']:.2f}",
                       f"{ft_ctrl['inserted_' + k]['accuracy'] * 100:.1f} % / "
                       f"{ft_ctrl['inserted_' + k]['logprob']:.2f}",
                       f"{eff['facts ' + k]['delta']:+.3f} (p={eff['facts ' + k]['p']:.2g})"]
                      for k in ("plain", "para")]), "",
          "![canary exposure](toaa_canaries.png)", "",
          "## Do the experiments interact? (CPDT)", "",
          f"Continual runs of {s.cpdt_steps} steps from the control run's final weights "
          f"(repetitions × {s.cpdt_rep_scale}); outcome Y = mean item score − mean control "
          "score per experiment. Entry = D = Y under the row's insertions − Y with none "
          f"(p-value: sign flips over items). Bonferroni threshold "
          f"{dep['bonferroni_threshold']:.4f}; `none_seed2` is a second no-insertion run "
          "(another data order): the noise level.", "",
          C.md_table(["row \\ outcome", *dep["columns"]],
                     [[r, *[f"{dep['D'][r][c]:+.3f} (p={dep['p'][r][c]:.3g})"
                            + (" **" if [r, c] in dep["flagged"] else "")
                            for c in dep["columns"]]] for r in dep["rows"]]), "",
          "`**` = off-diagonal entry significant after correction.", "",
          "![dependence matrix](toaa_dependence.png)", "", "## Findings", ""]
    md += findings(out, ct_full, eff, ft_full, s)
    _plots(out, ct_full, ct_ctrl, eff, s, workdir)
    data = {"preset": preset.name, "settings": asdict(s), "runs": out["runs"],
            "control": out["control"], "full": out["full"], "insertions": {
                "examples": n_ins, "stream_examples": ins["stream_examples"], "fraction": frac},
            "canaries": {"full": ct_full, "control": ct_ctrl}, "effects": eff,
            "facts": {"full": ft_full, "control": ft_ctrl}, "dependence": dep,
            "probes": asdict(p), "environment": C.environment()}
    return "\n".join(md), data


def findings(out: dict[str, Any], ct_full: dict[str, Any], eff: dict[str, dict[str, float]],
             ft_full: dict[str, Any], s: Settings, alpha: float = 0.05) -> list[str]:
    """Plain statements of what the numbers show (computed, never hard-coded)."""
    dep = out["dependence"]
    lines = []
    exps = [(r, ct_full[f"uniform x{r}"]["exposure"]) for r in s.canary_reps]
    mono = all(b >= a for (_, a), (_, b) in zip(exps, exps[1:], strict=False))
    lines.append("- Memorisation vs repetitions: canary exposure "
                 + ", ".join(f"{e:.2f} bits at {r}x" for r, e in exps)
                 + (" (grows with the repetitions)" if mono else " (not monotone)")
                 + "; against the same canaries in the control run the insertion effect is "
                 + ", ".join(f"{eff[f'uniform x{r}']['delta']:+.3f} nats/token at {r}x "
                             f"(p={eff[f'uniform x{r}']['p']:.2g}"
                             f"{', significant' if eff[f'uniform x{r}']['p'] < alpha else ''})"
                             for r in s.canary_reps) + ".")
    early, same = ct_full.get(f"early x{s.early_reps}"), ct_full.get(f"uniform x{s.early_reps}")
    if early is not None and same is not None:
        ge, gu = eff[f"early x{s.early_reps}"], eff[f"uniform x{s.early_reps}"]
        lines.append(f"- Forgetting: canaries seen {s.early_reps}x only in the first "
                     f"{s.early_fraction:.0%} of training end at exposure {early['exposure']:.2f} "
                     f"vs {same['exposure']:.2f} for the same count spread over the whole run; "
                     f"insertion effects {ge['delta']:+.3f} (p={ge['p']:.2g}) vs {gu['delta']:+.3f} "
                     f"(p={gu['p']:.2g}).")
    fp, fq = eff["facts plain"], eff["facts para"]
    lines.append(f"- Facts: inserted facts are recalled at {ft_full['inserted_plain']['accuracy']:.0%}"
                 f" vs {ft_full['control_plain']['accuracy']:.0%} for never-inserted ones; with the "
                 f"paraphrase probe {ft_full['inserted_para']['accuracy']:.0%} vs "
                 f"{ft_full['control_para']['accuracy']:.0%}; insertion effect on the object's "
                 f"log-probability {fp['delta']:+.3f} (p={fp['p']:.2g}), paraphrase probe "
                 f"{fq['delta']:+.3f} (p={fq['p']:.2g}).")
    planted = [["facts", "facts_para"], ["facts_para", "facts"]]
    found = [pl for pl in planted if pl in dep["flagged"]]
    other = [f for f in dep["flagged"] if f not in planted]
    text = f"- CPDT: {len(dep['flagged'])} off-diagonal entries significant"
    if {"facts", "facts_para"} <= set(s.experiments):
        text += (f"; the planted facts <-> paraphrase dependency was "
                 f"{'found' if found else 'not found'} after correction "
                 f"({', '.join(' -> '.join(f) for f in found) or 'neither direction'}; raw "
                 + ", ".join(f"D[{r}][{c}] = {dep['D'][r][c]:+.3f} (p={dep['p'][r][c]:.2g})"
                             for r, c in planted) + ")")
    lines.append(text + f"; {'no' if not other else len(other)} unplanted interaction"
                 f"{'' if len(other) == 1 else 's'} flagged.")
    noise = dep["D"].get("none_seed2", {})
    if noise:
        lines.append("- Noise row (second no-insertion run): |D| up to "
                     f"{max(abs(v) for v in noise.values()):.3f}.")
    jv = dep.get("joint_vs_alone", {})
    if jv:
        lines.append("- Joint run vs each experiment alone: "
                     + ", ".join(f"{k} {v['difference']:+.3f} (p={v['p']:.2g})"
                                 for k, v in jv.items()) + ".")
    return lines


def _plots(out: dict[str, Any], ct_full: dict[str, Any], ct_ctrl: dict[str, Any],
           eff: dict[str, dict[str, float]], s: Settings, workdir: Path) -> None:
    plt = C.plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("control", "control (no insertions)"), ("full", "with insertions")):
        st, lo = _val_curve(out["runs"][key])
        ax.plot(st, lo, label=label, marker="o", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("validation MLM loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(workdir / "toaa_loss.png", dpi=120)
    plt.close(fig)

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    reps = list(s.canary_reps)
    early = f"early x{s.early_reps}"
    ax.errorbar(reps, [eff[f"uniform x{r}"]["delta"] for r in reps],
                yerr=[eff[f"uniform x{r}"]["se"] for r in reps], marker="o", capsize=3,
                label="inserted uniformly")
    if early in eff:
        ax.errorbar([s.early_reps], [eff[early]["delta"]], yerr=[eff[early]["se"]], marker="s",
                    ls="", capsize=3, label=f"inserted in the first {s.early_fraction:.0%} only")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("repetitions")
    ax.set_ylabel("PLL gain vs the control run (nats/token)")
    ax.set_title("insertion effect per canary (mean ± s.e. over items)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    groups = [g for g in ct_full if isinstance(ct_full[g], dict)]
    x = np.arange(len(groups))
    bx.bar(x - 0.2, [ct_full[g]["exposure"] for g in groups], 0.4, label="full run")
    bx.bar(x + 0.2, [ct_ctrl[g]["exposure"] for g in groups], 0.4, label="control run")
    c = s.control_canaries
    unlearnt = float(np.mean([math.log2(c + 1) - math.log2(r) for r in range(1, c + 2)]))
    bx.axhline(unlearnt, color="grey", lw=0.8, ls=":", label="expected, nothing learnt")
    bx.set_xticks(x, groups, fontsize=8)
    bx.set_ylabel(f"mean exposure (bits, max {math.log2(c + 1):.1f})")
    bx.set_title("exposure against never-inserted controls", fontsize=9)
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(workdir / "toaa_canaries.png", dpi=120)
    plt.close(fig)

    dep = out["dependence"]
    mat = np.array([[dep["D"][r][c] for c in dep["columns"]] for r in dep["rows"]])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    lim = max(float(np.abs(mat).max()), 1e-6)
    im = ax.imshow(mat, cmap="coolwarm", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(dep["columns"])), dep["columns"], rotation=30, ha="right")
    ax.set_yticks(range(len(dep["rows"])), dep["rows"])
    for i, r in enumerate(dep["rows"]):
        for j, c in enumerate(dep["columns"]):
            ax.text(j, i, f"{mat[i, j]:+.2f}", ha="center", va="center", fontsize=7,
                    fontweight="bold" if [r, c] in dep["flagged"] else "normal")
    ax.set_xlabel("outcome Y_i")
    ax.set_ylabel("inserted data (condition)")
    fig.colorbar(im, ax=ax, label="D = Y(condition) − Y(none)")
    fig.tight_layout()
    fig.savefig(workdir / "toaa_dependence.png", dpi=120)
    plt.close(fig)


def run_experiment(preset: C.Preset, s: Settings, workdir: Path, root: Path) -> dict[str, Any]:
    """Collect, render and write the report; returns the report data."""
    return C.write_experiment(workdir, lambda: collect(preset, s, root),
                              lambda out, wd: render(out, preset, s, wd))


def run(args: argparse.Namespace) -> None:
    preset = C.PRESETS[args.preset]
    s = SETTINGS[args.preset]
    if args.seeds:
        s = replace(s, seed=C.parse_seeds(args.seeds, (s.seed,))[0])
    C.enable_compile_cache(C.runs_dir(args))
    run_experiment(preset, s, Path(args.workdir), C.runs_dir(args))


if __name__ == "__main__":
    C.main_wrapper(run, __doc__ or "")
