"""The README's experiment tables, rendered from each experiment's ``report.json``.

``README.md`` holds one block per experiment between ``<!-- reproduce:NAME -->`` and
``<!-- /reproduce:NAME -->``; :func:`rewrite_readme` replaces what is between the
markers with :func:`block` (a status line -- preset, date, pretraining budget,
plateau verdict -- and a table), so no number in those tables is copied by hand.
A report that lacks a field a table needs gets a line saying which, not a guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from experiments import guard
from experiments.common import fmt_ci, md_table, outside_ci

TASK_NAMES = {"ag_news": "AG News", "dbpedia": "DBpedia", "fewrel": "FewRel",
              "synthetic": "synthetic"}


def _task(t: str) -> str:
    return TASK_NAMES.get(t, t)


def _gap(g: Mapping[str, Any] | None) -> str:
    """A paired gap in points, signed, bold when its 95 % CI excludes 0."""
    if not g:
        return "n/a"
    text = f"{g['mean'] * 100:+.1f} ± {g['ci95'] * 100:.1f}"
    return f"**{text}**" if outside_ci(g) else text


def _loss(rec: Mapping[str, Any] | None, key: str = "mlm_loss") -> str:
    v = ((rec or {}).get("final_val") or {}).get(key)
    return f"{v:.3f}" if v is not None else "n/a"


def _acc(r: Mapping[str, Any] | None) -> str:
    return fmt_ci((r or {}).get("accuracy"))


def pretrain_gap(r: Mapping[str, Any]) -> str:
    rows = []
    for t, x in r["tasks"].items():
        pre = x["pretrained"]
        sz, labels = pre["split_sizes"], len(pre.get("label_names") or []) or None
        per = f" ({(sz['train'] + sz['val']) // labels})" if labels else ""
        rows.append([_task(t) + per, _acc(pre), _acc(x["random"]), _gap(x["gap"]),
                     fmt_ci(pre["baseline"]["accuracy"])])
    return md_table(["task (labels per class)", "pretrained", "random-init twin", "paired gap",
                     "TF-IDF + LR"], rows)


def data_size(r: Mapping[str, Any]) -> str:
    tasks = list(r["tasks"])
    head = ["docs", "steps", "val MLM loss"]
    for t in tasks:
        head += [f"{_task(t)} pretrained", f"{_task(t)} gap"]
    rows = []
    for n, s in sorted(r["sizes"].items(), key=lambda kv: int(kv[0])):
        row = [f"{int(n):,}", f"{s['pretrain']['steps']:,}", _loss(s["pretrain"])]
        for t in tasks:
            row += [_acc(s["tasks"][t]["pretrained"]), _gap(s["tasks"][t]["gap"])]
        rows.append(row)
    return md_table(head, rows)


def token_overlap(r: Mapping[str, Any]) -> str:
    k = r["k"]
    rows = [[f"{p['docs']:,}", _task(p["task"]), f"{p['overlap']['word_coverage_k'] * 100:.1f}",
             f"{p['overlap']['token_coverage_k'] * 100:.1f}", _gap(p["gap"])]
            for p in r["points"]]
    c = r["correlations"]["word_coverage_k"]
    return (md_table(["docs", "task", f"word coverage@{k} %", f"token coverage@{k} %", "gap"], rows)
            + f"\n\nWord coverage@{k} vs gap over all points: Pearson r = {c['pearson']:.2f}, "
              f"Spearman ρ = {c['spearman']:.2f}.")


def soft_committee(r: Mapping[str, Any]) -> str:
    k = len(r["members"])
    rows = []
    for t, x in r["tasks"].items():
        rows.append([_task(t), fmt_ci(x["committee"][str(k)]["accuracy"]),
                     fmt_ci(x["committee"]["1"]["accuracy"]), _acc(x["deep"]),
                     _gap(x["committee_minus_deep"]), fmt_ci(x["deep"]["baseline"]["accuracy"])])
    out = md_table(["task", f"committee of {k}", "single member", "6-layer model",
                    "committee − deep", "TF-IDF + LR"], rows)
    lat = r.get("latency") or {}
    com = next((v for n, v in lat.items() if n.startswith("committee")), None)
    if com and "deep" in lat:
        lrows = [[b, f"{com[b]['median_ms']:.2f}", f"{lat['deep'][b]['median_ms']:.2f}",
                  f"{com[b]['median_ms'] / lat['deep'][b]['median_ms']:.2f}×"]
                 for b in com if b in lat["deep"]]
        out += "\n\n" + md_table(["batch", "committee ms", "deep ms", "committee / deep"], lrows)
    return out


def objectives_compare(r: Mapping[str, Any]) -> str:
    ft = r.get("finetune") or {}
    tasks = sorted({k.split("__", 1)[1] for k in ft if "__" in k})
    rows = []
    for name, rec in r["pretrain"].items():
        loss = next(((k, v) for k, v in (rec.get("final_val") or {}).items()
                     if k.endswith("_loss") and k != "loss"), ("loss", None))
        rows.append([name, f"{rec['steps']:,}",
                     f"{loss[1]:.3f} ({loss[0]})" if loss[1] is not None else "n/a",
                     *[_acc(ft.get(f"{name}__{t}")) for t in tasks]])
    rows.append(["random init", "0", "-", *[_acc(ft.get(f"random-init__{t}")) for t in tasks]])
    base = [fmt_ci((ft.get(f"mlm__{t}") or {}).get("baseline", {}).get("accuracy")) for t in tasks]
    rows.append(["TF-IDF + LR", "-", "-", *base])
    return md_table(["objective", "steps", "val loss", *[_task(t) for t in tasks]], rows)


def conditional_training(r: Mapping[str, Any]) -> str:
    rows = [[n.replace("|", "\\|"), f"{s['misaligned']}/{s['n']}", f"{s['misaligned_rate'] * 100:.1f}",
             f"[{s['ci95'][0] * 100:.1f}, {s['ci95'][1] * 100:.1f}]", f"{s['hits_per_1k_words']:.1f}",
             f"{s['mean_words']:.1f}"] for n, s in r["samples"].items()]
    uses = "yes" if r["model_uses_control_token"] else "no"
    return (md_table(["setting", "flagged", "rate %", "95 % CI", "lexicon hits / 1k words",
                      "words / sample"], rows)
            + f"\n\n`<|good|>` vs MLE: two-proportion p = {r['p_value_good_vs_mle']:.2g}, rate ratio "
              f"{r['ratio_good_vs_mle']:.2f}, per-word ratio {r['hits_per_word_ratio_good_vs_mle']:.2f}; "
              f"the model uses the control token: {uses}.")


def sltrain(r: Mapping[str, Any]) -> str:
    mem = r["memory"]
    rows = []
    for name in ("dense", "sltrain"):
        run = r["runs"][name]["pretrain"]
        rows.append([name, f"{mem[name]['parameters']:,}",
                     f"{mem[name]['bytes']['total']['total'] / 2 ** 20:.2f}", _loss(run),
                     _acc(r["finetune"][name])])
    twin = r["random_init_twin"]
    rows.append(["random init", "-", "-", "-", _acc(twin)])
    rows.append(["TF-IDF + LR", "-", "-", "-", fmt_ci(twin["baseline"]["accuracy"])])
    return (md_table(["run", "parameters", "params + AdamW MiB", "val MLM loss",
                      f"{_task(r['task'])} acc"], rows)
            + f"\n\nSLTrain − dense: {_gap(r['gap'])} points; step time ratio "
              f"{r['step_time_ratio']:.2f}× (SLTrain / dense).")


def spdf(r: Mapping[str, Any]) -> str:
    rows = []
    for name, run in r["runs"].items():
        rows.append([name, f"{run['sparsity'] * 100:.0f} %",
                     f"{run['flops_per_step']['total'] / 1e9:.2f}", _loss(run["pretrain"]),
                     _acc(r["finetune"][name]), _gap(r["gaps"].get(name)) if name != "dense" else "-"])
    twin = r["random_init_twin"]
    rows.append(["random init", "-", "-", "-", _acc(twin), "-"])
    return md_table(["run", "sparsity", "GFLOP / step", "val MLM loss", f"{_task(r['task'])} acc",
                     "gap to dense"], rows)


def ingenious(r: Mapping[str, Any]) -> str:
    tasks = list(r["tasks"])
    rows = [[arm, _loss(run["pretrain"]),
             *[_acc(r["tasks"][t]["results"].get(arm)) for t in tasks]] for arm, run in r["runs"].items()]
    rows.append(["random init", "-", *[_acc(r["tasks"][t]["results"].get("twin")) for t in tasks]])
    return md_table(["arm", "val MLM loss", *[_task(t) for t in tasks]], rows)


def curation(r: Mapping[str, Any]) -> str:
    tasks = list(r["tasks"])
    rows = [[arm, f"{run['kept_fraction'] * 100:.0f} %", _loss(run["pretrain"]),
             *[_gap(r["tasks"][t]["gap"].get(arm)) for t in tasks]] for arm, run in r["runs"].items()]
    return md_table(["arm", "documents kept", "val MLM loss",
                     *[f"{_task(t)} gap to random init" for t in tasks]], rows)


def continual(r: Mapping[str, Any]) -> str:
    def ci(d: Mapping[str, Any], k: float = 1.0, digits: int = 3) -> str:
        return f"{d['mean'] * k:.{digits}f} ± {d['ci95'] * k:.{digits}f}"

    rows = []
    for recipe, s in r["summary"].items():
        oa = s["old_accuracy"]
        rows.append([recipe, ci(s["new_loss"]["final"]), ci(s["old_loss"]["final"]),
                     ci(s["old_loss"]["gap"]), ci(oa["gap"], 100, 1),
                     f"{oa['dip_runs']}/{oa['gap']['n']}", f"{oa['v_runs']}/{oa['gap']['n']}"])
    return md_table(["recipe", "new-corpus loss (final)", "old-corpus loss (final)",
                     "old-loss rise (max)", "old-acc dip (pts)", "runs with a dip", "V-shaped"], rows)


def toaa(r: Mapping[str, Any]) -> str:
    rows = [[k, f"{e['delta']:+.3f}", f"{e['p']:.2g}"] for k, e in r["effects"].items()]
    dep = r["dependence"]
    dv = r["full"]["final_val"]["mlm_loss"] - r["control"]["final_val"]["mlm_loss"]
    return (md_table(["inserted group", "effect (nats/token)", "p (sign flips)"], rows)
            + f"\n\nInserted examples: {r['insertions']['fraction'] * 100:.1f} % of the stream; "
              f"final validation MLM loss with insertions − without: {dv:+.4f}; CPDT interactions "
              f"flagged after Bonferroni (p < {dep['bonferroni_threshold']:.2g}): "
              f"{len(dep['flagged'])}.")


TABLES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "pretrain_gap": pretrain_gap, "data_size": data_size, "token_overlap": token_overlap,
    "soft_committee": soft_committee, "objectives_compare": objectives_compare,
    "conditional_training": conditional_training, "sltrain": sltrain, "spdf": spdf,
    "ingenious": ingenious, "curation": curation, "continual": continual, "toaa": toaa,
}


def _span(vals: list[float], fmt: str) -> str:
    lo, hi = min(vals), max(vals)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{lo:{fmt}}–{hi:{fmt}}"


def status_line(r: Mapping[str, Any]) -> str:
    """Preset, date, the pretraining budget, the machine and the plateau verdict, in one line."""
    env = r.get("environment") or {}
    preset = r.get("preset")
    preset = preset if isinstance(preset, str) else "its own"
    parts = [f"{preset} preset, report of {str(env.get('date', 'an unknown date'))[:10]}"]
    runs = list(((r.get("budget") or {}).get("models") or {}).values())
    if runs:
        steps = [x["steps"] for x in runs if x.get("steps") is not None]
        secs = [x["seconds"] for x in runs if x.get("seconds") is not None]
        toks = [x["tokens_seen"] for x in runs if x.get("tokens_seen")]
        b = f"{len(runs)} pretraining run{'s' * (len(runs) > 1)}"
        if steps:
            b += f" of {_span(steps, ',')} steps"
        if toks:
            each = (guard.tokens(toks[0]) if len(set(toks)) == 1
                    else f"{guard.tokens(min(toks))} to {guard.tokens(max(toks))}")
            b += f" ({each} each)"
        else:
            b += " (tokens not recorded)"
        if secs:
            t = sum(secs)
            b += f", {t / 60:,.0f} min in all" if t >= 120 else f", {t:.0f} s in all"
        parts.append(b)
    cpu = (r.get("budget") or {}).get("machine", {}).get("cpu")
    if cpu:
        flags = (r.get("budget") or {}).get("machine", {}).get("cpu_flags")
        parts.append(f"on {cpu}" + (f" ({flags})" if flags else ""))
    pl = r.get("plateau") or {}
    judged = [v for v in (pl.get("models") or {}).values() if v.get("on_plateau") is not None]
    if judged:
        loss = _span([v["val_loss"] for v in judged], ".3f")
        unig = _span([v["unigram_loss"] for v in judged], ".2f")
        what = guard.plateau_name(judged)
        if pl.get("flagged"):
            on = sum(bool(v["on_plateau"]) for v in judged)
            parts.append(f"val loss {loss}, unigram {unig}: **{on} of {len(judged)} models still on "
                         f"the {what}**, so these are results of under-trained models (a gap ≤ 0 "
                         "means the budget was too short)")
        else:
            parts.append(f"val loss {loss}, unigram {unig}: left the {what}")
    elif pl:
        parts.append("plateau not judged (no token loss or unigram baseline)")
    return "*" + "; ".join(parts) + ".*"


def block(name: str, report: Mapping[str, Any] | None, where: str) -> str:
    """The README text between ``name``'s markers (``where``: the report's path, for the link)."""
    if report is None:
        return (f"*No `{where}/report.json` yet: `python -m experiments.reproduce --only {name}` "
                "writes it.*")
    try:
        table = TABLES[name](report)
    except (KeyError, TypeError, ZeroDivisionError) as e:
        table = (f"*`{where}/report.json` lacks what this table needs ({type(e).__name__}: {e}); "
                 "re-run the experiment to regenerate it.*")
    return f"{status_line(report)} [report]({where}/report.md)\n\n{table}"


def marker_re(name: str) -> re.Pattern[str]:
    """The span between ``name``'s markers, the markers kept (group 1 and 3)."""
    n = re.escape(name)
    return re.compile(rf"(<!-- reproduce:{n} -->\n)(.*?)(<!-- /reproduce:{n} -->)", re.S)


def rewrite_readme(text: str, blocks: Mapping[str, str]) -> tuple[str, list[str], list[str]]:
    """``text`` with each named block replaced; also the names written and those lacking markers."""
    done, missing = [], []
    for name, body in blocks.items():
        rx = marker_re(name)
        if not rx.search(text):
            missing.append(name)
            continue
        text = rx.sub(lambda m, b=body: m.group(1) + b.rstrip() + "\n" + m.group(3), text, count=1)
        done.append(name)
    return text, done, missing
