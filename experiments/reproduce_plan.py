"""The pretraining runs each experiment will use, by name, without running anything.

``python -m experiments.reproduce --dry-run`` prints these, marking runs already
finished and runs another experiment trains first (a shared ``--runs-dir`` makes
them one run). Each plan is composed from the experiment module's own spec
functions, so it names exactly the directories ``run_pretrain`` will use
(tests/test_reproduce.py checks this against a real run). Runs that are named only
at run time (TOAA's insertion runs, which hash a file written then) are left out.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from experiments import common as C

Planned = tuple[str, Path, int]  # (run name, its directory, steps)


def _spec(spec: C.PretrainSpec, steps: int, root: Path) -> Planned:
    return spec.name, spec.workdir(root), steps


def _mod(name: str):  # noqa: ANN202 - a module
    return importlib.import_module(f"experiments.{name}")


def _gap(p: C.Preset, root: Path) -> list[Planned]:
    return [_spec(C.pretrain_spec(p), p.pretrain_steps, root)]


def _gap_tokenizer(p: C.Preset, root: Path) -> str:
    return str(C.pretrain_spec(p).workdir(root) / "tokenizer.json")


def _sizes(p: C.Preset, root: Path) -> list[Planned]:
    tok = _gap_tokenizer(p, root)
    return _gap(p, root) + [_spec(C.size_spec(p, n, tok), C.size_steps(p), root)
                            for n in p.data_sizes]


def _committee(p: C.Preset, root: Path) -> list[Planned]:
    steps = _mod("soft_committee").committee_steps(p)
    tok = _gap_tokenizer(p, root)
    out = _gap(p, root)
    out += [_spec(C.pretrain_spec(p, seed=s, tokenizer=tok, steps=steps), steps, root)
            for s in range(p.committee_k) if not (s == 0 and steps == p.pretrain_steps)]
    return out + [_spec(C.pretrain_spec(p, deep=True, tokenizer=tok, steps=steps), steps, root)]


def _continual(p: C.Preset, root: Path) -> list[Planned]:
    cl = _mod("continual")
    s = cl.SETTINGS[p.name]
    base = cl.base_spec(p, s)
    out = [_spec(base, s.base_steps, root)]
    return out + [_spec(cl.continual_spec(p, s, base.workdir(root), r, seed), s.steps, root)
                  for r in s.recipes for seed in s.seeds]


def _objectives(p: C.Preset, root: Path) -> list[Planned]:
    return [_spec(spec, p.pretrain_steps, root) for spec in _mod("objectives_compare").specs(p, 0).values()]


def _sparse(kind: str) -> Callable[[C.Preset, Path], list[Planned]]:
    def plan(p: C.Preset, root: Path) -> list[Planned]:
        S = _mod("sparse_runs")
        b = S.budget_for(p)
        extra = S.budget_overrides(b)
        dense = S.variant(C.pretrain_spec(p, steps=b.steps), "dense", extra)
        tok = str(dense.workdir(root) / "tokenizer.json")
        base = C.pretrain_spec(p, steps=b.steps, tokenizer=tok)
        if kind == "sltrain":
            sl = _mod("sltrain")
            others = [S.variant(base, "sltrain", (*extra, *sl.sltrain_overrides(S.model_hidden(base))))]
        else:
            others = [S.variant(base, "spdf", (*extra, "model.linear=spdf", f"model.spdf_sparsity={s}"))
                      for s in _mod("spdf").SPARSITIES]
        return [_spec(x, b.steps, root) for x in (dense, *others)]
    return plan


def _arms(name: str) -> Callable[[C.Preset, Path], list[Planned]]:
    def plan(p: C.Preset, root: Path) -> list[Planned]:
        m = _mod(name)
        s = m.settings_for(p)
        return [_spec(spec, s.steps, root) for spec in m.specs(p, s, root).values()]
    return plan


def _toaa(p: C.Preset, root: Path) -> list[Planned]:
    s = _mod("toaa_probes").SETTINGS[p.name]
    return [_spec(_mod("toaa").control_spec(p, s), s.steps, root)]


PLANS: dict[str, Callable[[C.Preset, Path], list[Planned]]] = {
    "pretrain_gap": _gap, "data_size": _sizes, "token_overlap": _sizes,
    "soft_committee": _committee, "continual": _continual, "objectives_compare": _objectives,
    "sltrain": _sparse("sltrain"), "spdf": _sparse("spdf"), "ingenious": _arms("ingenious"),
    "curation": _arms("curation"),
}


def planned_runs(name: str, preset: str, root: Path) -> list[Planned]:
    """The pretraining runs of experiment ``name`` (TOAA: its control run only)."""
    root = Path(root)
    if name == "conditional_training":
        ct = _mod("conditional_training")
        steps = ct.PRESETS[preset].steps
        return [(f"{preset}-{k}", root / f"{preset}-{k}", steps) for k in ("mle", "conditional")]
    if name == "toaa":
        return _toaa(C.PRESETS[preset], root)
    plan = PLANS.get(name)
    return plan(C.PRESETS[preset], root) if plan else []
