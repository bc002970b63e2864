"""Experiment 4: a soft committee of shallow models vs one deep model.

    python -m experiments.soft_committee --workdir DIR [--preset cpu|paper] [--runs-dir RUNS]

``K`` shallow (BERT-1-like) models are pretrained independently (different
initialisation and data order; shared tokenizer), each fine-tuned with the same
seeds; the committee's prediction averages their softmax outputs
(:func:`tlm_jax.eval.committee.committee_scores`). It is compared with a deep
(BERT-6-like) model of comparable parameter count, pretrained and fine-tuned
with the same budget. Inference latency of both is measured on this machine at
batch 1 and batch 256 (jitted forward pass, median of repeats; the committee
runs its members one after another).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from experiments import common as C
from tlm_jax.config import read_config
from tlm_jax.eval.committee import committee_scores, measure_latency
from tlm_jax.eval.metrics import mean_ci95
from tlm_jax.tasks.finetune import paired_gap

__all__ = ["collect", "committee_scores", "committee_steps", "measure_latency", "member_specs",
           "render", "run"]


def committee_steps(preset: C.Preset) -> int:
    """Pretraining steps of every committee member and of the deep model."""
    return preset.committee_steps or preset.pretrain_steps


def member_specs(preset: C.Preset, root: Path, k: int) -> list[tuple[C.PretrainSpec, Path]]:
    """The ``k`` committee members, pretrained or resumed (with the full budget, member 0 is
    the gap run itself)."""
    steps = committee_steps(preset)
    spec0, run0 = C.gap_pretrain(preset, root)
    tok = str(run0 / "tokenizer.json")
    out = []
    for s in range(k):
        if s == 0 and steps == preset.pretrain_steps:
            out.append((spec0, run0))
            continue
        spec = C.pretrain_spec(preset, seed=s, tokenizer=tok, steps=steps)
        out.append((spec, C.run_pretrain(spec, root, steps)))
    return out


def collect(preset: C.Preset, root: Path, tasks: list[str], seeds: list[int], k: int
            ) -> dict[str, Any]:
    members = member_specs(preset, root, k)
    tok = C.shared_tokenizer(preset, root)
    # Members are fine-tuned first: the deep model's pretraining may still be running
    # in another process (run_pretrain waits for it).
    mres_by_task = {t: [C.run_finetune(preset, root, f"{s.name}__{t}", t, seeds, pretrained=r)
                        for s, r in members] for t in tasks}
    deep_spec = C.pretrain_spec(preset, deep=True, tokenizer=tok, steps=committee_steps(preset))
    deep_run = C.run_pretrain(deep_spec, root, committee_steps(preset))
    out: dict[str, Any] = {"members": [s.name for s, _ in members], "deep": deep_spec.name,
                           "pretrain": {s.name: C.pretrain_summary(r) for s, r in members}
                           | {deep_spec.name: C.pretrain_summary(deep_run)}, "tasks": {}}
    for t in tasks:
        mres = mres_by_task[t]
        dres = C.run_finetune(preset, root, f"{deep_spec.name}__{t}", t, seeds,
                              pretrained=deep_run)
        dirs = [root / "finetune" / f"{s.name}__{t}" for s, _ in members]
        out["tasks"][t] = {"members": mres, "deep": dres,
                           "committee": committee_scores(dirs, seeds, mres[0]["label_names"])}
    return out


def render(out: dict[str, Any], preset: C.Preset, seeds: list[int], latency: dict[str, Any],
           workdir: Path, length: int) -> tuple[str, dict[str, Any]]:
    plt = C.plt()
    md = [f"# Soft committee of shallow models vs a deep model ({preset.name} preset)", "",
          f"{len(out['members'])} shallow models (`{' '.join(preset.shallow_model)}`) pretrained "
          f"independently ({committee_steps(preset)} steps each, different seeds) and fine-tuned "
          "with the same seeds; the committee averages their softmax outputs. The deep model "
          f"(`{' '.join(preset.deep_model)}`) has the same pretraining and fine-tuning budget. Test "
          f"accuracy in %, mean ± 95 % CI over {len(seeds)} seeds; the committee − deep "
          "difference is paired by seed.", ""]
    data: dict[str, Any] = {"preset": preset.name, "seeds": seeds, "members": out["members"],
                            "deep": out["deep"], "pretrain": out["pretrain"], "tasks": {},
                            "latency": latency, "latency_sequence_length": length,
                            "environment": C.environment()}
    findings = []
    for t, r in out["tasks"].items():
        member_params = r["members"][0]["parameters"]
        deep_params = r["deep"]["parameters"]
        rows = []
        for i, m in enumerate(r["members"]):
            rows.append([f"shallow member {i}", f"{m['parameters']:,}", C.fmt_ci(m["accuracy"]),
                         C.fmt_ci(m["macro_f1"])])
        comm = {}
        for k, per_seed in sorted(r["committee"].items(), key=lambda kv: int(kv[0])):
            acc = mean_ci95([x["accuracy"] for x in per_seed])
            f1 = mean_ci95([x["macro_f1"] for x in per_seed])
            comm[int(k)] = {"accuracy": acc, "macro_f1": f1, "per_seed": per_seed,
                            "parameters": int(k) * member_params}
            if int(k) > 1:
                rows.append([f"committee of {k}", f"{int(k) * member_params:,}", C.fmt_ci(acc),
                             C.fmt_ci(f1)])
        rows.append(["deep", f"{deep_params:,}", C.fmt_ci(r["deep"]["accuracy"]),
                     C.fmt_ci(r["deep"]["macro_f1"])])
        rows.append(["TF-IDF + LR", "-", C.fmt_ci(r["deep"]["baseline"]["accuracy"]),
                     C.fmt_ci(r["deep"]["baseline"]["macro_f1"])])
        kmax = max(comm)
        diff = paired_gap(comm[kmax]["per_seed"], r["deep"]["per_seed"])
        single = paired_gap(comm[kmax]["per_seed"], comm[1]["per_seed"])
        md += [f"## {t}", "", C.md_table(["model", "parameters", "accuracy", "macro-F1"], rows),
               "", f"- committee of {kmax} − deep: {C.fmt_ci(diff)} points "
               f"({'CI excludes 0' if C.outside_ci(diff) else 'CI includes 0'}); committee of "
               f"{kmax} − single member: {C.fmt_ci(single)} points.", ""]
        if C.outside_ci(diff):
            verdict = ("better than" if diff["mean"] > 0 else "worse than")
        else:
            verdict = "statistically indistinguishable from"
        findings.append(f"- {t}: the committee of {kmax} ({kmax * member_params:,} parameters) is "
                        f"{verdict} the deep model ({deep_params:,} parameters): "
                        f"{C.fmt_ci(diff)} points.")
        data["tasks"][t] = {"members": [C.slim(m) for m in r["members"]],
                            "deep": C.slim(r["deep"]),
                            "committee": {str(k): v for k, v in comm.items()},
                            "committee_minus_deep": diff, "committee_minus_single": single}
    lrows = []
    for name, res in latency.items():
        lrows.append([name] + [f"{res[str(b)]['median_ms']:.2f} ({res[str(b)]['p10_ms']:.2f}–"
                               f"{res[str(b)]['p90_ms']:.2f})" for b in preset.latency_batches]
                     + [f"{res[str(preset.latency_batches[-1])]['examples_per_s']:,.0f}"])
    env = data["environment"]
    md += ["## Inference latency on this machine", "",
           f"Jitted forward pass (classification logits), sequence length {length}, median of "
           f"{preset.latency_repeats} runs in ms (10th–90th percentile); the committee runs its "
           f"members sequentially. Machine: {env['cpu_count']} CPU cores, JAX "
           f"{env['jax']}, load average {env['loadavg']} at the time (the cores are shared, "
           "so absolute numbers are noisy; the ratio is the result).", "",
           C.md_table(["model"] + [f"batch {b} (ms)" for b in preset.latency_batches]
                      + [f"examples/s at {preset.latency_batches[-1]}"], lrows), "",
           "## Findings", "", *findings]
    if preset.name == "cpu":
        md.append(f"- Caveat: at this pretraining budget ({committee_steps(preset)} steps) MLM "
                  "pretraining has not left the unigram plateau, and `pretrain_gap` shows such "
                  "weights fine-tune *worse* than random ones; the accuracy comparison is "
                  "therefore mostly between architectures, and its CIs are wide (3 seeds). The "
                  "latency ratio does not depend on the weights.")
    names = list(latency)
    if len(names) == 2:
        a, b = names
        for bs in preset.latency_batches:
            ra = latency[a][str(bs)]["median_ms"] / max(latency[b][str(bs)]["median_ms"], 1e-9)
            md.append(f"- Batch {bs}: {a} takes {ra:.2f}× the time of {b}.")
    # Plots: accuracy vs parameters; latency bars.
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for t, d in data["tasks"].items():
        ks = sorted(int(k) for k in d["committee"])
        axes[0].errorbar([d["committee"][str(k)]["parameters"] / 1e6 for k in ks],
                         [d["committee"][str(k)]["accuracy"]["mean"] * 100 for k in ks],
                         yerr=[d["committee"][str(k)]["accuracy"]["ci95"] * 100 for k in ks],
                         marker="o", capsize=3, label=f"{t}: committee (k=1..{ks[-1]})")
        axes[0].errorbar([d["deep"]["parameters"] / 1e6], [d["deep"]["accuracy"]["mean"] * 100],
                         yerr=[d["deep"]["accuracy"]["ci95"] * 100], marker="s", capsize=3,
                         ls="", label=f"{t}: deep")
    axes[0].set_xlabel("parameters (millions)")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_title("Accuracy vs parameters (95% CI)")
    axes[0].legend(fontsize=7)
    width = 0.35
    for i, name in enumerate(names):
        axes[1].bar([j + (i - 0.5) * width for j in range(len(preset.latency_batches))],
                    [latency[name][str(b)]["median_ms"] for b in preset.latency_batches], width,
                    label=name)
    axes[1].set_xticks(range(len(preset.latency_batches)),
                       [f"batch {b}" for b in preset.latency_batches])
    axes[1].set_yscale("log")
    axes[1].set_ylabel("median latency (ms, log)")
    axes[1].set_title("Inference latency (this machine)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(workdir / "soft_committee.png", dpi=120)
    plt.close(fig)
    md += ["", "![committee vs deep](soft_committee.png)"]
    return "\n".join(md), data


def run(args: argparse.Namespace) -> None:
    preset = C.PRESETS[args.preset]
    seeds = C.parse_seeds(args.seeds, preset.seeds)
    k = args.k or preset.committee_k
    tasks, missing = C.available_tasks(args.tasks.split(",") if args.tasks
                                       else list(preset.committee_tasks))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    root = C.runs_dir(args)
    out = collect(preset, root, tasks, seeds, k)
    t0 = tasks[0]
    first = out["tasks"][t0]["members"][0]
    length = int(first.get("sequence_length") or 0) or preset.max_len
    seed_res = root / "finetune" / f"{out['members'][0]}__{t0}" / f"seed_{seeds[0]}" / "results.json"
    if seed_res.is_file():
        length = int(json.loads(seed_res.read_text()).get("sequence_length", length))
    shallow_cfg = read_config(root / "pretrain" / out["members"][0] / "config.json").model
    deep_cfg = read_config(root / "pretrain" / out["deep"] / "config.json").model
    latency = measure_latency({f"committee of {k} shallow": (shallow_cfg, k),
                               "deep": (deep_cfg, 1)},
                              len(first["label_names"]), length, list(preset.latency_batches),
                              preset.latency_repeats, log=C.log)
    md, data = render(out, preset, seeds, latency, workdir, length)
    if missing:
        md += "\n" + "\n".join(f"- {t}: skipped ({why})" for t, why in missing.items())
    C.write_report(workdir, md, data)


def _extra(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=0, help="committee size (default: the preset's)")


if __name__ == "__main__":
    C.main_wrapper(run, __doc__ or "", _extra)
