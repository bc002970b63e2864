"""Helpers of the experiments package: overlap measures, specs, task availability, reports."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from experiments import common as C
from tlm_jax.config import load_config
from tlm_jax.eval import overlap as O
from tlm_jax.tasks.finetune import load_finetune_config


def test_iter_words_groups_continuations() -> None:
    vocab = {"[PAD]": 0, "the": 1, "play": 2, "##ing": 3, "##s": 4, "cat": 5}
    cont = O.continuation_mask(vocab, 6)
    assert cont.tolist() == [False, False, False, True, True, False]
    words = list(O.iter_words(np.array([1, 2, 3, 5, 4, 2]), cont))
    assert words == [(1,), (2, 3), (5, 4), (2,)]
    # A sequence that starts mid-word still yields its first piece as a word.
    assert list(O.iter_words(np.array([3, 1]), cont)) == [(3,), (1,)]


def test_overlap_stats_by_hand() -> None:
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "a": 3, "b": 4, "##x": 5, "c": 6}
    cont = O.continuation_mask(vocab, 7)
    corpus_docs = [np.array([3, 3, 3, 4, 5]), np.array([3, 4, 5, 4, 5])]
    counts = np.bincount(np.concatenate(corpus_docs), minlength=7)  # a:4 b:3 ##x:2
    words = O.word_counts(corpus_docs, cont)  # a: 4, b##x: 3
    assert words[(3,)] == 4 and words[(4, 5)] == 3 and (4,) not in words
    task = [np.array([2, 3, 4, 5, 6, 1])]  # [CLS] a b##x c [UNK]
    st = O.overlap_stats(counts, words, task, cont, special=[0, 1, 2], unk=1, k=2)
    # tokens (CLS dropped): a b ##x c UNK -> covered (>=2): a, b, ##x = 3/5
    assert st["task_tokens"] == 5 and st["token_coverage_k"] == pytest.approx(3 / 5)
    # words: a, b##x, c, UNK -> covered: a (4), b##x (3) = 2/4
    assert st["task_words"] == 4 and st["word_coverage_k"] == pytest.approx(2 / 4)
    # token types: task {a,b,##x,c}, corpus {a,b,##x}: Jaccard 3/4, recall 3/4
    assert st["token_jaccard"] == pytest.approx(3 / 4)
    assert st["token_type_recall"] == pytest.approx(3 / 4)
    assert st["unk_rate"] == pytest.approx(1 / 5)
    st4 = O.overlap_stats(counts, words, task, cont, special=[0, 1, 2], unk=1, k=4)
    assert st4["word_coverage_k"] == pytest.approx(1 / 4)


def test_correlations() -> None:
    assert O.pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert O.spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)
    assert O.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(O.pearson([1, 1, 1], [1, 2, 3]))


def test_committee_experiment_uses_package_helpers_and_synthetic_is_available(monkeypatch) -> None:
    from experiments import soft_committee
    from tlm_jax.eval import committee

    # The experiment scores and times with the package's functions (tests/test_committee.py).
    assert soft_committee.committee_scores is committee.committee_scores
    assert soft_committee.measure_latency is committee.measure_latency
    # The built-in synthetic task needs no data directory.
    monkeypatch.setenv("TLM_DATA_DIR", "/nonexistent")
    ok, missing = C.available_tasks(["synthetic", "ag_news"])
    assert ok == ["synthetic"] and set(missing) == {"ag_news"}


def test_specs_are_valid_configs() -> None:
    p = C.PRESETS["cpu"]
    spec = C.pretrain_spec(p)
    cfg = load_config(None, list(spec.overrides))
    assert cfg.model.layers == 1 and cfg.data.num_docs == p.gap_docs
    assert cfg.train.steps == p.pretrain_steps and cfg.data.subset == "random"
    deep = C.pretrain_spec(p, deep=True, tokenizer="/x/tokenizer.json")
    dcfg = load_config(None, list(deep.overrides))
    assert dcfg.model.layers == 6 and dcfg.data.tokenizer == "/x/tokenizer.json"
    assert deep.name != spec.name and "-tok" in deep.name
    # The largest data_size run is the gap run with the full budget, else committee member 0.
    full = dataclasses.replace(p, size_steps=0)
    assert C.size_spec(full, p.gap_docs, "/x/tokenizer.json") == spec
    assert C.size_spec(p, p.gap_docs, "/x/t.json") == C.pretrain_spec(
        p, tokenizer="/x/t.json", steps=p.size_steps)
    for preset in C.PRESETS.values():
        assert len(preset.data_sizes) >= 4
        for t in preset.tasks:
            fc = load_finetune_config(None, C.finetune_overrides(preset, t), task=t)
            assert fc.task.train_per_class == preset.tasks[t]["train_per_class"]
            assert fc.train.checkpoint is False
    paper = load_config(None, list(C.pretrain_spec(C.PRESETS["paper"]).overrides))
    assert paper.model.hidden == 768 and paper.model.layers == 1


def test_pretrain_done_and_reports(tmp_path) -> None:
    wd = tmp_path / "run"
    assert not C.pretrain_done(wd, 10)
    (wd / "checkpoints" / "10").mkdir(parents=True)
    (wd / "summary.json").write_text(json.dumps({"steps": 10}))
    assert C.pretrain_done(wd, 10) and not C.pretrain_done(wd, 20)
    assert C.fmt_ci({"mean": 0.8123, "ci95": 0.0131}) == "81.2 ± 1.3"
    assert C.outside_ci({"mean": 0.02, "ci95": 0.01, "n": 3})
    assert not C.outside_ci({"mean": 0.02, "ci95": 0.03, "n": 3})
    assert not C.outside_ci({"mean": 0.02, "ci95": 0.0, "n": 1})
    table = C.md_table(["a", "b"], [[1, 2]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    C.write_report(tmp_path / "rep", "# hi", {"x": Counter(a=1)})
    md = (tmp_path / "rep" / "report.md").read_text().splitlines()
    # The plateau guard and the budget go right under the title (tests/test_reproduce.py).
    assert md[0] == "# hi" and md[2].startswith("> **Plateau guard: not judged**")
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["x"] == {"a": 1} and rep["plateau"]["flagged"] is None and "cpu" in rep["environment"]
