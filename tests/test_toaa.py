"""Train-Once-Answer-All: stream insertions, per-experiment metrics, the dependence matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tlm_jax.data.cache import TokenArrays
from tlm_jax.data.insertion import (
    InsertionExperiment,
    load_experiments,
    plan_insertions,
    write_experiments,
)
from tlm_jax.data.pipeline import ExampleSource, make_dataset
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.errors import TLMError
from tlm_jax.eval.interventions import (
    auc,
    contrast,
    dependence_matrix,
    exposure,
    sign_flip_pvalue,
)

SP = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=100)
MAX_LEN, BATCH, STEPS = 24, 8, 30


def _source(seed: int = 0, short: bool = False) -> ExampleSource:
    rng = np.random.default_rng(seed)
    lo, hi = (3, 8) if short else (MAX_LEN, 60)  # long docs: every example body is full
    docs = [rng.integers(10, 100, rng.integers(lo, hi)).astype(np.uint16) for _ in range(50)]
    return ExampleSource(TokenArrays.from_docs(docs, np.uint16), SP, MAX_LEN)


def _experiments() -> list[InsertionExperiment]:
    return [
        InsertionExperiment("canaries", ("a", "b", "c"), (1, 2, 5)),
        InsertionExperiment("late", ("d", "e"), (3, 3), "random-range", 10, 20),
        InsertionExperiment("facts", ("f",), (4,)),
    ]


def _seqs(exps) -> list[list[np.ndarray]]:
    # Token ids 5..9 never occur in the corpus (ids 10..99), so insertions are recognisable.
    toks = {"a": [5, 6, 7], "b": [6, 5], "c": [7, 7, 7, 7], "d": [8, 9, 8], "e": [9], "f": [5, 9, 5]}
    return [[np.array(toks[t], np.int32) for t in e.texts] for e in exps]


def _plan(exps=None, seed=0, steps=STEPS):
    exps = exps or _experiments()
    return plan_insertions(exps, _seqs(exps), SP, steps=steps, global_batch=BATCH,
                           max_len=MAX_LEN, seed=seed)


def _stream(plan, source) -> tuple[np.ndarray, np.ndarray]:
    clean = make_dataset(source, BATCH, seed=1)
    dirty = make_dataset(source, BATCH, seed=1, transform=plan.transform)
    a = np.concatenate([clean[i]["input_ids"] for i in range(STEPS)])
    b = np.concatenate([dirty[i]["input_ids"] for i in range(STEPS)])
    return a, b


def test_insertions_are_disjoint_counted_wrapped_and_keep_the_token_count() -> None:
    plan = _plan()
    clean, dirty = _stream(plan, _source())
    assert clean.shape == dirty.shape  # the stream's length is unchanged
    assert ((clean != SP.pad).sum(1) == (dirty != SP.pad).sum(1)).all()  # so is every example's
    seen: dict[tuple[int, ...], list[int]] = {}
    intervals = []
    for k in range(len(clean)):
        diff = np.nonzero(clean[k] != dirty[k])[0]
        if len(diff) == 0:
            continue
        # Corpus ids are 10..99, so every written token differs: the diff is the window.
        start, end = int(diff.min()), int(diff.max()) + 1
        e, t = plan.lookup[k]
        w = plan.windows[e][t]
        assert np.array_equal(dirty[k, start:end], w)
        assert w[0] == SP.sep and w[-1] == SP.sep  # EOS-style boundaries
        assert start >= 1 and end <= MAX_LEN - 1  # inside the body: [CLS] and the last [SEP] kept
        seen.setdefault(tuple(w[1:-1].tolist()), []).append(k)
        intervals.append((k * MAX_LEN + start, k * MAX_LEN + start + len(w)))
    # Every sequence appears exactly `repetitions` times.
    for e, exp in enumerate(plan.experiments):
        for t, r in enumerate(exp.repetitions):
            assert len(seen[tuple(plan.windows[e][t][1:-1].tolist())]) == r
    assert len(intervals) == sum(e.insertions for e in plan.experiments)
    # Pairwise disjoint token intervals (within and across experiments).
    iv = sorted(intervals)
    assert all(b0 >= a1 for (_, a1), (b0, _) in zip(iv, iv[1:], strict=False))
    # random-range: positions inside [start_token, end_token) of the stream.
    late = plan.experiments.index(next(e for e in plan.experiments if e.name == "late"))
    for ks in plan.slots[late]:
        assert all(10 * BATCH <= k < 20 * BATCH for k in ks)
        for k in ks:
            pos = next(a for a, _ in intervals if a // MAX_LEN == k)
            assert 10 * BATCH * MAX_LEN <= pos < 20 * BATCH * MAX_LEN


def test_same_seed_same_map_other_seed_moves_it() -> None:
    a, b, c = _plan(seed=3), _plan(seed=3), _plan(seed=4)
    assert a.summary() == b.summary()
    assert a.summary()["experiments"] != c.summary()["experiments"]
    src = _source()
    assert np.array_equal(_stream(a, src)[1], _stream(b, src)[1])


def test_an_experiment_keeps_its_slots_when_others_join() -> None:
    alone = _plan([_experiments()[0]])
    joint = _plan()
    assert [s.tolist() for s in alone.slots[0]] == [s.tolist() for s in joint.slots[0]]


def test_short_example_is_replaced_by_the_window() -> None:
    plan = _plan([InsertionExperiment("c", ("c",), (1,))])
    k = int(plan.slots[0][0][0])
    ex = np.array([SP.cls, 50, 51, SP.sep] + [SP.pad] * (MAX_LEN - 4), np.int32)
    out = plan.apply(k, ex)
    assert out[:8].tolist() == [SP.cls, SP.sep, 7, 7, 7, 7, SP.sep, SP.sep]
    assert (out[8:] == SP.pad).all()
    assert plan.apply(k + 1, ex) is ex  # no insertion there


def test_insertion_errors_and_file_round_trip(tmp_path) -> None:
    with pytest.raises(TLMError, match="free examples"):
        _plan([InsertionExperiment("x", ("a",), (BATCH * 3,), "random-range", 0, 2)])
    with pytest.raises(TLMError, match="longer than an example"):
        plan_insertions([InsertionExperiment("x", ("a",), (1,))], [[np.arange(30)]], SP,
                        steps=STEPS, global_batch=BATCH, max_len=MAX_LEN, seed=0)
    with pytest.raises(TLMError, match="outside the run"):
        _plan([InsertionExperiment("x", ("a",), (1,), "random-range", 5, 99)])
    with pytest.raises(TLMError, match="mode random-range"):
        InsertionExperiment.from_dict({"name": "x", "texts": ["a"], "start_step": 3})
    with pytest.raises(TLMError, match="repetitions"):
        InsertionExperiment.from_dict({"name": "x", "texts": ["a", "b"], "repetitions": [1]})
    path = write_experiments(_experiments(), tmp_path / "x.json")
    assert load_experiments(path) == _experiments()
    (tmp_path / "dup.json").write_text(json.dumps([{"name": "a", "texts": ["x"]}] * 2))
    with pytest.raises(TLMError, match="twice"):
        load_experiments(tmp_path / "dup.json")


# ----------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------


def test_exposure_auc_contrast_by_hand() -> None:
    controls = np.array([-5.0, -4.0, -3.0])  # C = 3 -> max exposure log2(4) = 2
    e = exposure(np.array([-2.0, -3.5, -6.0]), controls)
    # ranks: 1 (no control >= it), 2 (one control >= it), 4 (all three >= it)
    assert e.tolist() == pytest.approx([2.0, 2.0 - np.log2(2), 0.0])
    assert auc(np.array([-2.0]), controls) == 1.0
    assert auc(np.array([-4.0]), controls) == pytest.approx(0.5)
    assert contrast(np.array([-2.0, -4.0]), controls).tolist() == [2.0, 0.0]


def test_sign_flip_pvalue() -> None:
    assert sign_flip_pvalue(np.ones(10)) == pytest.approx(2 / 1024)
    assert sign_flip_pvalue(np.zeros(8)) == 1.0
    rng = np.random.default_rng(0)
    assert sign_flip_pvalue(rng.normal(0, 1, 40)) > 0.05
    assert sign_flip_pvalue(rng.normal(1, 1, 40)) < 0.001


def _items(planted: bool, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    exps = ["a", "b", "c"]
    base = {e: rng.normal(0, 1, 24) for e in exps}
    items = {"none": base}
    for row in [*exps, "joint"]:
        items[row] = {}
        for col in exps:
            effect = 1.0 if (row == col or row == "joint") else 0.0
            if planted and row == "b" and col == "a":  # b's data moves a's metric
                effect = 0.8
            items[row][col] = base[col] + effect + rng.normal(0, 0.02, 24)
    return items


def test_dependence_matrix_finds_planted_dependency_only() -> None:
    clean = dependence_matrix(_items(planted=False), ["a", "b", "c"])
    assert clean["independent"] and clean["flagged"] == []
    for r in ("a", "b", "c"):
        assert clean["D"][r][r] == pytest.approx(1.0, abs=0.02)
        for c in {"a", "b", "c"} - {r}:
            assert abs(clean["D"][r][c]) < 0.02
    for c in ("a", "b", "c"):  # the joint row matches the diagonal
        assert abs(clean["joint_vs_alone"][c]["difference"]) < 0.02
    planted = dependence_matrix(_items(planted=True), ["a", "b", "c"])
    assert planted["flagged"] == [["b", "a"]] and not planted["independent"]
    assert planted["D"]["b"]["a"] == pytest.approx(0.8, abs=0.02)
    # A control run against itself gives D = 0 exactly.
    same = _items(planted=False)
    same["none_again"] = same["none"]
    assert all(v == 0.0 for v in dependence_matrix(same, ["a", "b", "c"])["D"]["none_again"].values())


# ----------------------------------------------------------------------------
# End to end: a tiny run memorises its canaries
# ----------------------------------------------------------------------------


def test_inserted_canaries_score_above_controls(tmp_path) -> None:
    from tlm_jax.config import load_config
    from tlm_jax.data.corpus import prepare_corpus
    from tlm_jax.eval.interventions import load_scorer
    from tlm_jax.train.loop import pretrain

    base = ["model.hidden=64", "model.layers=1", "model.heads=2", "model.intermediate=128",
            "model.max_len=32", "data.max_len=32", "data.vocab_size=1000",
            "data.synthetic_docs=300", "train.batch_size=16", "optim.warmup_steps=5",
            "optim.lr=1e-2", "train.progress=false", "train.tensorboard=false",
            "train.eval_every=0", "model.dropout=0.0", "model.attention_dropout=0.0"]
    # The run's own tokenizer, without a run: the canaries are made of its whole words.
    tok = prepare_corpus(load_config(None, base).data, progress=False, log=lambda _: None).tokenizer
    tok_path = tmp_path / "tokenizer.json"
    tok.save(str(tok_path))
    words = [w for w in sorted(tok.get_vocab()) if w.isalpha() and len(w) >= 3]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 5, replace=False)) for _ in range(14)]
    inserted = texts[:4]  # texts[4:] are the never-inserted controls
    spec = write_experiments([InsertionExperiment("canaries", tuple(inserted), (60,) * 4)],
                             tmp_path / "canaries.json")
    run = tmp_path / "run"
    pretrain(load_config(None, [*base, "train.steps=60", f"data.tokenizer={tok_path}",
                                f"interventions.file={spec}"]), run, log=lambda _: None)
    summary = json.loads((run / "insertions.json").read_text())
    assert summary["experiments"][0]["insertions"] == 240
    sc = load_scorer(run, log=lambda _: None)
    scores = sc.sequence_scores(texts)
    # The tokenizer (so the canaries' words) varies between trainings (HF WordPiece breaks
    # ties in hash order): demand a clear margin, not a perfect ranking of every draw.
    assert auc(scores[:4], scores[4:]) >= 0.85, scores
    assert scores[:4].mean() - scores[4:].mean() > 0.5, scores
    # Candidate log-probabilities are a distribution over the candidates.
    lp = sc.choice_logprobs(["the {o} of it", "{o} is here"], words[:5])
    assert lp.shape == (2, 5) and np.allclose(np.exp(lp).sum(1), 1.0)


def test_experiment_module_tiny(tmp_path) -> None:
    """experiments.toaa end to end at toy size: control, full run, CPDT (two experiments)."""
    import dataclasses

    from experiments import common as C
    from experiments import toaa as X

    tiny = ("model.hidden=32", "model.layers=1", "model.heads=2", "model.intermediate=64",
            "model.max_len=32", "data.max_len=32", "data.vocab_size=1000",
            "data.synthetic_docs=200", "train.batch_size=16", "optim.warmup_steps=2",
            "optim.lr=3e-3", "train.progress=false", "train.tensorboard=false",
            "train.eval_every=3", "train.eval_batches=1", "train.checkpoint_every=6",
            "train.keep_checkpoints=1", "train.steps=6")
    preset = dataclasses.replace(C.PRESETS["cpu"], pretrain_lr=3e-3)
    s = X.Settings(steps=6, cpdt_steps=4, cpdt_warmup=1, canary_words=3, canaries_per_group=2,
                   canary_reps=(1, 2), control_canaries=4, facts=3, control_facts=3,
                   fact_reps=1, para_reps=1, null_seed=None, experiments=("canaries", "facts"),
                   base_overrides=tiny)
    data = X.run_experiment(preset, s, tmp_path / "report", tmp_path / "runs")
    for name in ("report.md", "report.json", "toaa_loss.png", "toaa_canaries.png",
                 "toaa_dependence.png"):
        assert (tmp_path / "report" / name).is_file()
    dep = data["dependence"]
    assert dep["rows"] == ["canaries", "facts", "joint"] and dep["columns"] == ["canaries", "facts"]
    assert data["insertions"]["examples"] == 2 * 1 + 2 * 2 + 3
    assert set(data["canaries"]["full"]) >= {"uniform x1", "uniform x2", "controls_pll"}
    assert 0.0 <= data["facts"]["full"]["inserted_plain"]["accuracy"] <= 1.0
    assert "Do the experiments interact?" in (tmp_path / "report" / "report.md").read_text()
