"""Continual pretraining: PPL selection, epoch mixtures, budgets, V-shape detector, init/resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tlm_jax.config import load_config
from tlm_jax.data.cache import TokenArrays
from tlm_jax.data.mixture import (
    BigramLM,
    EpochMixture,
    MixtureDataset,
    select_lowest,
    select_random,
    share_counts,
    subset_arrays,
    trained_lengths,
)
from tlm_jax.data.pipeline import ExampleSource, make_dataset
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.errors import TLMError
from tlm_jax.eval.stability import eval_steps, stability_gap
from tlm_jax.train.continual import eval_every_tokens

SPECIAL = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=50)


def _docs(n: int, seed: int = 0, lo: int = 3, hi: int = 40) -> TokenArrays:
    rng = np.random.default_rng(seed)
    return TokenArrays.from_docs([rng.integers(5, 50, rng.integers(lo, hi)).astype(np.uint16)
                                  for _ in range(n)], dtype=np.uint16)


# ----------------------------------------------------------------------------
# Strategy II: the perplexity selector
# ----------------------------------------------------------------------------


def test_ppl_selector_takes_exactly_the_lowest_prefix_in_any_input_order() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(200) * 100
    costs = rng.integers(1, 30, 200)
    budget = 900
    sel = select_lowest(scores, costs, budget)
    order = np.argsort(scores)
    k = len(sel)
    # Exactly the k lowest, their cost fits, and the next-lowest item would overflow.
    assert set(sel.tolist()) == set(order[:k].tolist())
    assert costs[sel].sum() <= budget < costs[order[:k + 1]].sum()
    assert np.all(np.diff(scores[sel]) >= 0)
    # Input order does not matter: permute items, map the selection back.
    perm = rng.permutation(200)
    sel_p = select_lowest(scores[perm], costs[perm], budget)
    assert set(perm[sel_p].tolist()) == set(sel.tolist())
    # Budget 0 = everything (above the minimum cost), in score order.
    assert len(select_lowest(scores, costs, 0)) == 200
    assert set(select_lowest(scores, costs, 0, min_cost=10).tolist()) == set(
        np.nonzero(costs >= 10)[0].tolist())


def test_ppl_selector_ties_are_broken_by_content_not_position() -> None:
    arrays = _docs(30, seed=1)
    scores = np.repeat([1.0, 2.0, 3.0], 10)  # many ties
    costs = np.full(30, 5)
    sel = select_lowest(scores, costs, 5 * 15, arrays=arrays)
    chosen = {arrays.doc(i).tobytes() for i in sel}
    perm = np.random.default_rng(2).permutation(30)
    shuffled = subset_arrays(arrays, perm)
    sel2 = select_lowest(scores[perm], costs[perm], 5 * 15, arrays=shuffled)
    assert {shuffled.doc(i).tobytes() for i in sel2} == chosen
    assert len(sel) == 15 and set(scores[sel]) == {1.0, 2.0}


def test_bigram_lm_is_normalised_and_prefers_reference_like_text() -> None:
    ref = [np.array([5, 6, 7, 5, 6, 7, 5, 6, 7]), np.array([5, 6, 7, 8])]
    lm = BigramLM.fit(ref, vocab_size=12)
    for history in (5, 6, 9):  # seen histories and an unseen one
        probs = [np.exp(lm.token_logprobs(np.array([history, w]))[1]) for w in range(12)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-9)
    like = lm.perplexity(np.array([5, 6, 7, 5, 6, 7]))
    unlike = lm.perplexity(np.array([7, 6, 5, 9, 10, 11]))
    assert like < unlike / 5
    with pytest.raises(TLMError, match="reference text is empty"):
        BigramLM.fit([np.array([], np.int64)], vocab_size=12)


def test_random_subset_is_seeded_and_within_budget() -> None:
    costs = np.random.default_rng(3).integers(1, 20, 100)
    a = select_random(costs, 300, seed=7)
    assert costs[a].sum() <= 300 and np.array_equal(a, select_random(costs, 300, seed=7))
    assert not np.array_equal(np.sort(a), np.sort(select_random(costs, 300, seed=8)))


def test_trained_lengths_follow_packing() -> None:
    arrays = TokenArrays.from_docs([np.ones(n, np.uint16) for n in (3, 10, 200)])
    assert trained_lengths(arrays, 32, "truncate").tolist() == [3, 10, 30]
    assert trained_lengths(arrays, 32, "pack").tolist() == [3, 10, 200]


# ----------------------------------------------------------------------------
# Strategy III and replay: epoch mixtures
# ----------------------------------------------------------------------------


def test_share_counts_sum_and_round() -> None:
    assert share_counts([0.82, 0.18], 100).tolist() == [82, 18]
    c = share_counts([1, 1, 1], 10)
    assert c.sum() == 10 and sorted(c.tolist()) == [3, 3, 4]


@pytest.mark.parametrize("resample", [True, False])
def test_epoch_mixture_shares_and_dynamic_vs_fixed(resample: bool) -> None:
    pools = [200, 5000]  # HQ pool, old corpus
    m = EpochMixture(pools, [0.82, 0.18], 100, seed=11, resample=resample)
    hq_sets = []
    for e in range(4):
        src = np.array([m[e * 100 + i][0] for i in range(100)])
        loc = np.array([m[e * 100 + i][1] for i in range(100)])
        assert (src == 0).sum() == 82 and (src == 1).sum() == 18  # exact shares every epoch
        assert loc[src == 0].max() < 200 and loc[src == 1].max() < 5000  # from its own pool
        assert len(set(loc[src == 0].tolist())) == 82  # no repeats inside an epoch
        hq_sets.append(frozenset(loc[src == 0].tolist()))
    if resample:
        assert len(set(hq_sets)) == 4  # a different HQ sample every epoch
    else:
        assert len(set(hq_sets)) == 1  # data-fixed: the same sample every epoch
    # The seed reproduces the mixture; another seed changes it.
    again = EpochMixture(pools, [0.82, 0.18], 100, seed=11, resample=resample)
    other = EpochMixture(pools, [0.82, 0.18], 100, seed=12, resample=resample)
    assert [again[i] for i in range(300)] == [m[i] for i in range(300)]
    assert [other[i] for i in range(300)] != [m[i] for i in range(300)]


def test_small_pool_repeats_whole_permutations() -> None:
    m = EpochMixture([10], [1.0], 25, seed=0)
    loc = np.array([m[i][1] for i in range(25)])
    # Two whole permutations (every item twice) and five items of a third.
    assert sorted(np.bincount(loc, minlength=10).tolist()) == [2] * 5 + [3] * 5


def test_mixture_through_the_pipeline_keeps_epoch_shares_and_budget() -> None:
    """Grain's shuffle+repeat over a MixtureDataset keeps each epoch's exact composition.

    The pool ids are recoverable from the tokens (new docs use ids < 30, old ones >= 30);
    a multi-epoch run over a budgeted pool trains epochs x pool tokens (<= epochs x budget).
    """
    rng = np.random.default_rng(0)
    new = TokenArrays.from_docs([rng.integers(5, 30, 10).astype(np.uint16) for _ in range(60)])
    old = TokenArrays.from_docs([rng.integers(30, 50, 10).astype(np.uint16) for _ in range(300)])
    budget = 200  # tokens: 20 of the 60 new documents
    costs = trained_lengths(new, 16, "truncate")
    pool = subset_arrays(new, select_random(costs, budget, seed=0))
    new_src, old_src = (ExampleSource(a, SPECIAL, 16) for a in (pool, old))
    mix = MixtureDataset([new_src, old_src], EpochMixture([len(new_src), len(old_src)],
                                                          [0.75, 0.25], 20, seed=3))
    epochs, batch = 4, 10
    ds = make_dataset(mix, batch, seed=5)
    stream = np.concatenate([ds[i]["input_ids"] for i in range(epochs * 20 // batch)])
    is_new = stream[:, 1] < 30
    for e in range(epochs):
        assert is_new[e * 20:(e + 1) * 20].sum() == 15
    trained_new = int((stream[is_new] >= 5).sum())
    assert trained_new == epochs * 15 * 10 <= epochs * budget


def test_mixture_errors() -> None:
    with pytest.raises(TLMError, match="is empty"):
        EpochMixture([0, 10], [0.5, 0.5], 10, seed=0)
    with pytest.raises(TLMError, match="not positive"):
        EpochMixture([10], [1.0], 0, seed=0)
    with pytest.raises(TLMError, match="continual.replay"):
        load_config(None, ["continual.replay=1.5", "continual.init_from=/x"])
    with pytest.raises(TLMError, match="need continual.init_from"):
        load_config(None, ["continual.replay=0.1"])
    with pytest.raises(TLMError, match="continual.select="):
        load_config(None, ["continual.select=best", "continual.init_from=/x"])


# ----------------------------------------------------------------------------
# Evaluation cadence and the V-shape detector
# ----------------------------------------------------------------------------


def test_v_shape_detector() -> None:
    steps = list(range(0, 60, 10))
    v = stability_gap(steps, [0.50, 0.42, 0.38, 0.45, 0.52, 0.55], higher_is_better=True, tol=0.01)
    assert v["dip"] and v["v_shape"] and v["recovered"] and v["worst_step"] == 20
    assert v["gap"] == pytest.approx(0.12) and v["recovery"] == pytest.approx(0.17)
    mono = stability_gap(steps, [0.50, 0.51, 0.53, 0.55, 0.56, 0.60], higher_is_better=True, tol=0.01)
    assert not mono["dip"] and not mono["v_shape"] and mono["gap"] == 0.0
    stuck = stability_gap(steps, [0.50, 0.45, 0.40, 0.40, 0.40, 0.395], higher_is_better=True,
                          tol=0.01)
    assert stuck["dip"] and not stuck["v_shape"] and not stuck["recovered"]
    # Losses: worse = higher.
    loss = stability_gap(steps, [6.0, 6.4, 6.9, 6.5, 6.2, 6.1], higher_is_better=False, tol=0.05)
    assert loss["dip"] and loss["v_shape"] and loss["worst"] == 6.9 and loss["recovered"] is False
    noise = stability_gap(steps, [0.5, 0.495, 0.5, 0.51, 0.5, 0.5], higher_is_better=True, tol=0.01)
    assert not noise["dip"]


def test_eval_cadence() -> None:
    assert eval_steps(50, 10) == [0, 10, 20, 30, 40, 50]
    assert eval_steps(45, 10) == [0, 10, 20, 30, 40, 45]
    assert eval_steps(20, 10, start=8) == [10, 20]
    # Every N tokens -> steps: 32 x 128 tokens a step.
    assert eval_every_tokens(40_960, 32, 128) == 10
    assert eval_every_tokens(50_000, 32, 128) == 13
    assert eval_every_tokens(1, 32, 128) == 1


# ----------------------------------------------------------------------------
# End to end: init from a run, tokenizer refusal, named eval sets, resume
# ----------------------------------------------------------------------------

TINY = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.intermediate=64",
        "model.max_len=32", "data.max_len=32", "data.vocab_size=1000", "train.batch_size=16",
        "optim.warmup_steps=2", "optim.lr=3e-3", "train.progress=false", "train.tensorboard=false",
        "train.log_every=1"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from tlm_jax.train.loop import pretrain

    wd = tmp_path_factory.mktemp("base")
    pretrain(load_config(None, [*TINY, "data.synthetic_docs=300", "train.steps=8",
                                "train.eval_every=0", "train.eval_batches=2"]), wd,
             log=lambda _: None)
    return wd


def test_tokenizer_mismatch_is_refused(base_run, tmp_path) -> None:
    from tlm_jax.data.tokenizer import train_wordpiece
    from tlm_jax.train.continual import resolve_init

    other = train_wordpiece(["completely different words here"] * 50, 1000)
    path = tmp_path / "other.json"
    other.save(str(path))
    cfg = load_config(None, [*TINY, f"continual.init_from={base_run}", f"data.tokenizer={path}"])
    with pytest.raises(TLMError, match="differs from the tokenizer of continual.init_from") as e:
        resolve_init(cfg, log=lambda _: None)
    assert "\n" not in e.value.one_line()
    # The same tokenizer by another path is accepted; the architecture comes from the run.
    ok = resolve_init(load_config(None, [*TINY, "model.layers=3", f"continual.init_from={base_run}",
                                         f"data.tokenizer={base_run / 'tokenizer.json'}"]))
    assert ok.model.layers == 1
    with pytest.raises(TLMError, match="has no config.json"):
        resolve_init(load_config(None, [*TINY, f"continual.init_from={tmp_path}"]))


def test_continual_run_starts_from_the_init_weights_and_resumes_exactly(base_run, tmp_path) -> None:
    from tlm_jax.train.loop import pretrain
    from tlm_jax.train.metrics import read_metrics

    args = [*TINY, "data.synthetic_docs=200", "data.seed=1", f"continual.init_from={base_run}",
            "continual.replay=0.25", "continual.select=ppl", "continual.select_tokens=2500",
            "continual.select_min_tokens=8", "train.steps=12", "train.eval_every=4",
            "train.eval_batches=2", "train.checkpoint_every=4", "train.keep_checkpoints=5",
            "train.async_checkpoint=false"]
    wd = tmp_path / "cont"
    pretrain(load_config(None, args), wd, log=lambda _: None)
    info = json.loads((wd / "data_info.json").read_text())["continual"]
    assert info["select"] == "ppl" and info["pool_tokens"] <= 2500
    assert info["epoch_counts"] == [round(info["pool_docs"] * 0.75),
                                    info["pool_docs"] - round(info["pool_docs"] * 0.75)]
    # Named evaluation sets at the configured cadence.
    old = read_metrics(wd, "val_old")
    assert [m["step"] for m in old] == eval_steps(12, 4)
    assert [m["step"] for m in read_metrics(wd, "val")] == eval_steps(12, 4)
    # Step 0 scores the init run's weights on the init run's own validation batches.
    base_val = read_metrics(base_run, "val")[-1]
    assert old[0]["mlm_loss"] == pytest.approx(base_val["mlm_loss"], rel=1e-5)
    # Re-warmup: the lr starts again from 0.
    train = read_metrics(wd, "train")
    assert train[0]["lr"] == 0.0 and train[2]["lr"] > 0
    # Crash after the step-8 checkpoint: drop the newer one, rerun, compare every later step.
    ref = {m["step"]: m["loss"] for m in train}
    shutil.rmtree(wd / "checkpoints" / "12")
    (wd / "summary.json").unlink()
    summary = pretrain(load_config(None, args), wd, log=lambda _: None)
    assert summary["start_step"] == 8
    again = read_metrics(wd, "train")
    assert [m["step"] for m in again] == list(range(1, 13))
    for m in again:
        assert m["loss"] == ref[m["step"]], m["step"]
    # Changing the mixture on resume is refused.
    with pytest.raises(TLMError, match="continual settings differ"):
        pretrain(load_config(None, [*args, "continual.replay=0.5"]), wd, log=lambda _: None)


def test_experiment_module_tiny(tmp_path) -> None:
    """experiments.continual end to end on tiny synthetic corpora (old: seed 0, new: seed 1)."""
    import dataclasses

    from experiments import common as C
    from experiments import continual as X

    preset = dataclasses.replace(C.PRESETS["cpu"], max_len=32, pretrain_batch=16, pretrain_lr=3e-3)
    s = X.Settings(base_steps=6, steps=8, seeds=(0,), eval_every=2, eval_batches=1,
                   recipes=("baseline", "I+II+III"), min_doc_tokens=4,
                   base_overrides=(*TINY, "data.synthetic_docs=200", "train.steps=6",
                                   "train.eval_every=0", "train.eval_batches=1"),
                   new_overrides=("data.source=synthetic", "data.synthetic_docs=150",
                                  "data.seed=1", "data.val_docs=8"))
    data = X.run_experiment(preset, s, tmp_path / "report", tmp_path / "runs")
    for name in ("report.md", "report.json", "stability_gap.png"):
        assert (tmp_path / "report" / name).is_file()
    assert set(data["summary"]) == {"baseline", "I+II+III"}
    mixed = data["runs"]["I+II+III"][0]
    assert mixed["pool"]["pool_tokens"] <= X.subset_budget(preset, s)
    assert mixed["pool"]["replay"] == s.mixture_replay and mixed["pool"]["select"] == "ppl"
    assert mixed["curves"]["old"]["step"] == eval_steps(8, 2)
    assert data["runs"]["baseline"][0]["pool"]["select"] == "all"
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| I+II+III |" in md and "## Findings" in md
    # A second call reuses every finished sub-run and reproduces the report.
    again = X.run_experiment(preset, s, tmp_path / "report", tmp_path / "runs")
    assert again["summary"] == json.loads(json.dumps(data["summary"]))
