"""The INGENIOUS and curation experiment modules: specs, and end to end on tiny settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_experiment_preset

from experiments import common as C
from experiments import curation, ingenious
from tlm_jax.config import load_config

# A hidden-32 one-layer model, a few steps on 240 Wikipedia articles, one fine-tuning epoch
# on 8 AG News texts per class.
TINY = tiny_experiment_preset(steps=6, docs=240)


def test_specs_resolve_to_valid_configs(tmp_path: Path) -> None:
    s = ingenious.settings_for(C.PRESETS["cpu"])
    assert s.steps == 200 and s.seeds == (0, 1) and s.warm_steps < s.steps
    arms = ingenious.specs(C.PRESETS["cpu"], s, tmp_path)
    cfgs = {a: load_config(None, list(spec.overrides)) for a, spec in arms.items()}
    assert cfgs["full"].data.selection.method == "none"
    assert cfgs["ingenious"].data.selection.method == "ingenious"
    assert not cfgs["ingenious"].data.selection.center
    assert cfgs["ingenious_centred"].data.selection.center
    assert cfgs["random"].data.selection.method == "random"
    assert cfgs["random"].data.tokenizer == str(arms["full"].workdir(tmp_path) / "tokenizer.json")
    for c in cfgs.values():  # the pretraining recipe is the preset's, warmup scaled to the run
        assert c.optim.lr == C.PRESETS["cpu"].pretrain_lr and c.data.num_docs == s.docs
        assert c.optim.warmup_steps == min(C.PRESETS["cpu"].warmup_steps, s.steps // 10)
    assert len({a.name for a in arms.values()}) == 4
    paper = ingenious.settings_for(C.PRESETS["paper"])
    assert paper.steps == C.PRESETS["paper"].pretrain_steps and paper.partitions == 1500

    cs = curation.settings_for(C.PRESETS["cpu"])
    carms = curation.specs(C.PRESETS["cpu"], cs, tmp_path)
    assert list(carms) == ["unfiltered", "quality-keep0.7", "quality-keep0.4"]
    assert carms["unfiltered"] == arms["full"]  # shared when both experiments share RUNS
    q = load_config(None, list(carms["quality-keep0.4"].overrides)).data
    assert q.filters == ["quality"] and q.filter_options["quality"]["keep"] == 0.4
    tox = curation.settings_for(C.PRESETS["cpu"], "toxicity")
    assert tox.thresholds == (0.0, 0.002)
    t = load_config(None, list(curation.specs(C.PRESETS["cpu"], tox, tmp_path)[
        "toxicity-max0.002"].overrides)).data
    assert t.filter_options["toxicity"]["max"] == 0.002
    # Differently sized splits never share a fine-tune name (finished runs are skipped by name).
    names = {ingenious.finetune_name("run", "ag_news", z)
             for z in (None, {"train_per_class": 50}, {"train_per_class": 20})}
    assert len(names) == 3 and "run__ag_news" in names


@pytest.mark.slow
def test_ingenious_experiment_tiny(tmp_path: Path, data_dir: Path) -> None:
    s = ingenious.Settings(docs=240, steps=6, warm_steps=2, refresh_every=2, partitions=2,
                           eval_every=3, tasks=("ag_news",), seeds=(0, 1))
    out = ingenious.collect(TINY, tmp_path / "runs", s, ["ag_news"])
    md, data = ingenious.render(out, TINY, s, {}, tmp_path)
    C.write_report(tmp_path, md, data)
    assert (tmp_path / "ingenious.png").stat().st_size > 0
    rep = json.loads((tmp_path / "report.json").read_text())
    runs = rep["runs"]
    assert runs["full"]["selection"] is None
    for arm in ingenious.SELECTED:
        sel = runs[arm]["selection"]
        assert sel["method"] == arm.split("_")[0] and sel["center"] == (arm == "ingenious_centred")
        assert [p["start_step"] for p in sel["phases"]] == [2, 4]
        assert runs[arm]["seen"]["subset_size"] < runs["full"]["seen"]["examples"]
    assert runs["full"]["seen"]["reads"] == 6 * TINY.pretrain_batch
    assert len(runs["full"]["val_curve"]) == 3  # steps 0, 3, 6
    assert rep["tasks"]["ag_news"]["vs_random"]["ingenious_centred"]["n"] == 2
    assert "| ag_news |" in md and "INGENIOUS − random subset" in md
    assert ingenious.compare({"mean": 0.01, "ci95": 0.0, "n": 2}).startswith("identical")
    assert ingenious.compare({"mean": 0.05, "ci95": 0.01, "n": 2}) == "better"


@pytest.mark.slow
def test_curation_experiment_tiny(tmp_path: Path, data_dir: Path) -> None:
    s = curation.Settings(docs=240, steps=4, thresholds=(0.5,), eval_every=2,
                          tasks=("ag_news",), seeds=(0, 1))
    out = curation.collect(TINY, tmp_path / "runs", s, ["ag_news"])
    md, data = curation.render(out, TINY, s, {}, tmp_path)
    C.write_report(tmp_path, md, data)
    assert (tmp_path / "curation.png").stat().st_size > 0
    rep = json.loads((tmp_path / "report.json").read_text())
    run = rep["runs"]["quality-keep0.5"]
    (f,) = run["filters"]
    assert f["scorer"] == "perplexity" and f["kept"] + f["dropped"] == f["input"]
    assert abs(run["kept_fraction"] - 0.5) <= 1 / f["input"] + 1e-9
    assert rep["runs"]["unfiltered"]["filters"] == []
    assert set(rep["tasks"]["ag_news"]["gap"]) == {"unfiltered", "quality-keep0.5"}
    assert rep["pool_toxicity"]["documents"] == rep["runs"]["unfiltered"]["train_docs"]
    assert "quality-keep0.5 − unfiltered" in md
