"""The SLTrain and SPDF experiment modules end to end on tiny settings (real data, minutes)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import tiny_experiment_preset

from experiments import common as C
from experiments import sparse_runs as S

# A tiny preset: a hidden-32 one-layer model, 4 pretraining steps on 200 Wikipedia articles,
# one fine-tuning epoch on 8 AG News texts per class.
TINY = tiny_experiment_preset(steps=4, docs=200)
BUDGET = S.Budget(steps=4, seeds=(0, 1), eval_every=2, timing_steps=2, timing_rounds=1)


def test_budgets_resolve_and_variants_are_distinct() -> None:
    cpu = S.budget_for(C.PRESETS["cpu"])
    assert cpu.steps == 300 and cpu.seeds == (0, 1) and cpu.task == "ag_news"
    paper = S.budget_for(C.PRESETS["paper"])
    assert paper.steps == C.PRESETS["paper"].pretrain_steps and paper.seeds == C.PRESETS[
        "paper"].seeds
    base = C.pretrain_spec(TINY)
    a = S.variant(base, "spdf", ("model.linear=spdf", "model.spdf_sparsity=0.5"))
    b = S.variant(base, "spdf", ("model.linear=spdf", "model.spdf_sparsity=0.75"))
    assert a.name != b.name and a.overrides[-1] == "model.spdf_sparsity=0.5"


@pytest.mark.slow
def test_sltrain_experiment_tiny(tmp_path: Path, data_dir: Path) -> None:
    from experiments import sltrain

    out = sltrain.collect(TINY, tmp_path / "runs", BUDGET, [0, 1])
    md, data = sltrain.render(out, TINY, BUDGET, [0, 1], tmp_path)
    C.write_report(tmp_path, md, data)
    assert (tmp_path / "sltrain.png").stat().st_size > 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["sltrain_settings"]["model.sltrain_rank"] == "8"  # hidden 32 / 4
    r = rep["memory"]["ratios"]
    assert r["projection_parameters"] < 0.6 and r["params"] < 1 and r["opt_state"] < 1
    assert rep["finetune"]["sltrain"]["pretrained"]["densified_from"] == "sltrain"
    assert len(rep["runs"]["sltrain"]["val_curve"]) == 3  # steps 0, 2, 4
    assert rep["gap"]["n"] == 2 and rep["random_init_twin"]["pretrained"]["init"] == "random"
    assert "SLTrain keeps" in md and "| sltrain |" in md
    assert all(r["step_seconds"]["median_s"] > 0 for r in rep["runs"].values())


@pytest.mark.slow
def test_spdf_experiment_tiny(tmp_path: Path, data_dir: Path) -> None:
    from experiments import spdf

    budget = dataclasses.replace(BUDGET, timing_rounds=0)  # timed in the SLTrain test
    out = spdf.collect(TINY, tmp_path / "runs", budget, [0, 1], sparsities=(0.75,))
    md, data = spdf.render(out, TINY, budget, [0, 1], tmp_path)
    C.write_report(tmp_path, md, data)
    assert (tmp_path / "spdf.png").stat().st_size > 0
    rep = json.loads((tmp_path / "report.json").read_text())
    d, s = rep["runs"]["dense"]["flops_per_step"], rep["runs"]["spdf75"]["flops_per_step"]
    assert s["projections"] == pytest.approx(0.25 * d["projections"])
    assert s["head"] == d["head"] and s["attention"] == d["attention"]
    assert rep["runs"]["spdf75"]["pretrain_flops"] == pytest.approx(4 * s["total"])
    assert rep["finetune"]["spdf75"]["pretrained"]["densified_from"] == "spdf"
    assert rep["gaps"]["spdf75"]["n"] == 2 and "Random-init twin" in md
    assert "| spdf75 | 75 % |" in md and rep["runs"]["dense"]["step_seconds"] is None
