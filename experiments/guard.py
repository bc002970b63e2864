"""The top of every report: the pretraining budget and the plateau guard's verdict.

:func:`annotate` finds the pretrained models in a report's data (every record with
a ``final_val``: what :func:`experiments.budget.pretrain_summary` returns), judges
each with :func:`tlm_jax.eval.plateau.plateau_verdict` against its corpus's unigram
loss, and adds

* to ``report.json``: ``budget`` (per model: steps, tokens, seconds, validation
  loss; the machine) and ``plateau`` (the criterion, each model's verdict, and
  ``flagged``: True when any judged model is still on the plateau);
* to ``report.md``, as the first lines after the title: the verdict (an experiment
  whose model never left the plateau says so *before* its tables, so a negative gap
  is read as "this budget was too short", not as a finding) and the budget.

Re-annotating replaces the lines an earlier pass wrote, so it is idempotent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tlm_jax.eval import plateau as PL

GUARD_PREFIX = "> **Plateau guard"
BUDGET_PREFIX = "> **Pretraining budget"
_SKIP = ("environment", "budget", "plateau")  # report.json keys that hold no model


def report_models(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The pretrained models of a report: ``{short name: run record}`` in document order.

    A record is a dict with ``final_val`` and ``steps`` or ``seconds``; its name is its
    JSON path without the ``runs.`` / ``sizes.`` / ``pretrain.`` wrappers (the run's
    directory name where nothing else is left).
    """
    out: dict[str, dict[str, Any]] = {}

    def walk(x: Any, path: str) -> None:
        if isinstance(x, dict):
            if "final_val" in x and ("steps" in x or "seconds" in x):
                out[_short(path, x)] = x
                return
            for k, v in x.items():
                if not (path == "" and k in _SKIP):
                    walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")

    walk(dict(data), "")
    return out


def _short(path: str, rec: Mapping[str, Any]) -> str:
    name = path.removesuffix(".pretrain")
    for prefix in ("runs.", "sizes.", "pretrain."):
        name = name.removeprefix(prefix)
    if name in ("", "pretrain", "base") and rec.get("run"):
        run = Path(str(rec["run"])).name
        name = f"base ({run})" if name == "base" else run
    return name or "model"


def judge(models: Mapping[str, Mapping[str, Any]], fallback: Mapping[str, Any] | None = None,
          margin: float = PL.PLATEAU_MARGIN) -> dict[str, Any]:
    """The ``plateau`` block of report.json for ``models``.

    Each model is judged by its first token loss (:data:`~tlm_jax.eval.plateau.TOKEN_LOSS_KEYS`)
    against its own ``unigram`` baseline, else ``fallback`` (``{"unigram_loss", "source"}``).
    """
    verdicts = {}
    for name, m in models.items():
        tl = PL.token_loss(m.get("final_val"))
        own = m.get("unigram") or {}
        base = own if own.get("unigram_loss") is not None else (fallback or {})
        if tl is None:
            v = PL.PlateauVerdict(None, None, base.get("unigram_loss"), margin, None,
                                  "not judged: no token-prediction validation loss")
        else:
            v = PL.plateau_verdict(tl[1], base.get("unigram_loss"), margin)
        verdicts[name] = {**v.to_dict(), "loss_key": tl[0] if tl else None,
                          "unigram_source": base.get("source")}
    judged = [v["on_plateau"] for v in verdicts.values() if v["on_plateau"] is not None]
    return {"criterion": f"validation token loss > unigram loss - {margin:g} nats "
                         "(tlm_jax.eval.plateau)",
            "margin": margin, "flagged": any(judged) if judged else None, "models": verdicts}


def budget(models: Mapping[str, Mapping[str, Any]], env: Mapping[str, Any] | None
           ) -> dict[str, Any]:
    """The ``budget`` block of report.json: each model's compute, and the machine."""
    env = env or {}
    rows = {}
    for name, m in models.items():
        tl = PL.token_loss(m.get("final_val"))
        rows[name] = {"steps": m.get("steps"), "tokens_seen": m.get("tokens_seen"),
                      "batch_size": m.get("batch_size"), "seq_len": m.get("seq_len"),
                      "seconds": m.get("seconds"), "train_tokens": m.get("train_tokens"),
                      "val_loss": tl[1] if tl else None, "loss_key": tl[0] if tl else None}
    machine = {k: env.get(k) for k in ("cpu", "cpu_flags", "cpu_count", "xla_flags", "date")}
    return {"models": rows, "machine": machine}


def annotate(markdown: str, data: Mapping[str, Any], *, fallback: Mapping[str, Any] | None = None,
             borrowed: Mapping[str, Mapping[str, Any]] | None = None
             ) -> tuple[str, dict[str, Any]]:
    """``markdown`` and ``data`` with the budget and plateau verdict added (see module doc).

    ``borrowed``: the models of another report to judge when this one records none
    (an experiment that reuses another's runs without copying their summaries).
    """
    models = report_models(data) or dict(borrowed or {})
    out = {k: v for k, v in data.items() if k not in ("budget", "plateau")}
    out["budget"] = budget(models, data.get("environment"))
    out["plateau"] = judge(models, fallback)
    if not report_models(data) and borrowed:
        out["plateau"]["models_from"] = "another report (this one records no pretraining run)"
    return _with_header(markdown, [guard_line(out), budget_line(out)]), out


def _with_header(markdown: str, lines: list[str]) -> str:
    """Put ``lines`` right under the title, replacing lines an earlier pass put there."""
    src = markdown.splitlines()
    title = next((i for i, ln in enumerate(src) if ln.startswith("# ")), None)
    if title is None:
        return "\n\n".join(lines) + "\n\n" + markdown
    rest = src[title + 1:]
    while rest and (not rest[0].strip() or rest[0].startswith((GUARD_PREFIX, BUDGET_PREFIX))):
        rest.pop(0)
    block = []
    for ln in lines:
        block += ["", ln]
    return "\n".join([*src[:title + 1], *block, "", *rest])


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.3f}" if abs(hi - lo) < 5e-4 else f"{lo:.3f}-{hi:.3f}"


def plateau_name(verdicts: list[Mapping[str, Any]]) -> str:
    """``MLM plateau`` when every judged loss is an MLM loss, else ``plateau`` (CLM, SLM, ...)."""
    return "MLM plateau" if all(v.get("loss_key") == "mlm_loss" for v in verdicts) else "plateau"


def guard_line(data: Mapping[str, Any]) -> str:
    """The report.md line of the plateau verdict."""
    pl = data.get("plateau") or {}
    ms = pl.get("models") or {}
    judged = {n: v for n, v in ms.items() if v.get("on_plateau") is not None}
    if not judged:
        why = next((v["reason"] for v in ms.values()), "no pretrained model in this report")
        return f"{GUARD_PREFIX}: not judged** -- {why.removeprefix('not judged: ')}."
    on = {n: v for n, v in judged.items() if v["on_plateau"]}
    thr = _span([v["threshold"] for v in judged.values()])
    if on:
        names = ", ".join(list(on)[:4]) + (f" and {len(on) - 4} more" if len(on) > 4 else "")
        return (f"{GUARD_PREFIX}: NOT out of the {plateau_name(list(judged.values()))}.** "
                f"{len(on)} of {len(judged)} "
                f"pretrained models ({names}) end with a validation loss of "
                f"{_span([v['val_loss'] for v in on.values()])}, above {thr} (the unigram "
                f"loss of the corpus minus {pl.get('margin', PL.PLATEAU_MARGIN):g} nat). Such a "
                "model has learned little beyond token frequencies: read what follows as results "
                "of an under-trained model -- a gap ≤ 0 means this budget was too short, not "
                "that pretraining does not help.")
    return (f"{GUARD_PREFIX}: passed** -- every pretrained model left the "
            f"{plateau_name(list(judged.values()))} "
            f"(validation loss {_span([v['val_loss'] for v in judged.values()])} ≤ {thr}, the "
            f"unigram loss minus {pl.get('margin', PL.PLATEAU_MARGIN):g} nat).")


def _num(x: Any, unit: str = "", digits: int = 0) -> str:
    if x is None:
        return "n/a"
    return f"{float(x):,.{digits}f}{unit}"


def tokens(n: float | None) -> str:
    """``32.8 M tokens`` / ``1,024 tokens`` / ``tokens n/a``."""
    if not n:
        return "tokens n/a"
    return f"{n / 1e6:.1f} M tokens" if n >= 1e6 else f"{n:,.0f} tokens"


def model_budget(b: Mapping[str, Any]) -> str:
    """``8,000 steps, 32.8 M tokens, 2,610 s, val mlm_loss 4.962`` (n/a where not recorded)."""
    return (f"{_num(b.get('steps'))} steps, {tokens(b.get('tokens_seen'))}, "
            f"{_num(b.get('seconds'), ' s')}, "
            f"val {b.get('loss_key') or 'loss'} {_num(b.get('val_loss'), digits=3)}")


def budget_line(data: Mapping[str, Any]) -> str:
    """The report.md line of the pretraining budget and the machine."""
    b = data.get("budget") or {}
    rows = b.get("models") or {}
    m = b.get("machine") or {}
    if rows:
        parts = [f"{n}: {model_budget(r)}" for n, r in list(rows.items())[:6]]
        if len(rows) > 6:
            parts.append(f"{len(rows) - 6} more in report.json")
        runs = "; ".join(parts)
    else:
        runs = "not recorded in report.json"
    cpu = m.get("cpu") or "CPU model not recorded"
    flags = f" ({m['cpu_flags']})" if m.get("cpu_flags") else ""
    cores = f", {m['cpu_count']} cores" if m.get("cpu_count") else ""
    xla = f", XLA_FLAGS `{m['xla_flags']}`" if m.get("xla_flags") else ""
    return f"{BUDGET_PREFIX}:** {runs}. Machine: {cpu}{flags}{cores}{xla}."


def summary_line(data: Mapping[str, Any]) -> str:
    """One line for the terminal: the verdict and the worst model's numbers."""
    pl = data.get("plateau") or {}
    judged = {n: v for n, v in (pl.get("models") or {}).items() if v.get("on_plateau") is not None}
    if not judged:
        return "plateau guard: not judged"
    on = [n for n, v in judged.items() if v["on_plateau"]]
    loss = _span([v["val_loss"] for v in judged.values()])
    thr = _span([v["threshold"] for v in judged.values()])
    if on:
        return (f"PLATEAU: {len(on)} of {len(judged)} pretrained models still on the "
                f"{plateau_name(list(judged.values()))} (val loss {loss} vs threshold {thr}); read "
                "its negative gaps as 'budget too short'")
    return f"plateau guard: passed (val loss {loss} ≤ {thr})"


def save_report(workdir: Path, markdown: str, data: Mapping[str, Any]) -> None:
    """Write ``report.md`` / ``report.json`` (atomic: a reader never sees half a file)."""
    for name, text in (("report.md", markdown.rstrip() + "\n"),
                       ("report.json", json.dumps(data, indent=2, default=str) + "\n")):
        tmp = Path(workdir) / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, Path(workdir) / name)


def guard_report(workdir: Path, *, fallback: Mapping[str, Any] | None = None,
                 borrowed: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Re-annotate an existing ``report.md`` / ``report.json`` in place; returns the data."""
    workdir = Path(workdir)
    data = json.loads((workdir / "report.json").read_text())
    md = (workdir / "report.md").read_text() if (workdir / "report.md").is_file() else ""
    md, data = annotate(md, data, fallback=fallback, borrowed=borrowed)
    save_report(workdir, md, data)
    return data
