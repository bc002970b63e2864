"""INGENIOUS subset selection: facility-location maths, sampling, schedule, features, the loop hook."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tlm_jax.data import selection as S
from tlm_jax.data.cache import TokenArrays
from tlm_jax.data.pipeline import ExampleSource, ShardInfo, make_dataset, make_iterator
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.errors import TLMError


def _blocks(n=61, parts=3, d=6, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d))
    blocks = S.random_partition(n, parts, seed)
    return x, blocks, blocks >= 0, S.block_kernels(x, blocks)


def test_partition_covers_every_example_once_in_near_equal_blocks() -> None:
    b = S.random_partition(103, 7, seed=3)
    ids = b[b >= 0]
    assert sorted(ids.tolist()) == list(range(103))
    sizes = (b >= 0).sum(1)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 103
    assert np.array_equal(b, S.random_partition(103, 7, seed=3))
    assert not np.array_equal(b, S.random_partition(103, 7, seed=4))


def test_facility_location_is_monotone_and_submodular() -> None:
    _, _, valid, k = _blocks(n=40, parts=1)
    k0 = k[0]
    rng = np.random.default_rng(1)
    for _ in range(200):
        big = rng.choice(40, size=rng.integers(1, 30), replace=False)
        small = big[:rng.integers(0, len(big) + 1)]
        e = rng.choice(np.setdiff1d(np.arange(40), big))
        gain_small = S.facility_location(k0, [*small, e]) - S.facility_location(k0, small)
        gain_big = S.facility_location(k0, [*big, e]) - S.facility_location(k0, big)
        assert gain_small >= gain_big - 1e-5  # diminishing returns
        assert gain_big >= -1e-6  # monotone
    assert S.facility_location(k0, []) == 0.0
    # Negative cosines are clipped: f of the whole block is sum_i K_ii = block size.
    assert S.facility_location(k0, np.arange(40)) == pytest.approx(40.0, rel=1e-5)


@pytest.mark.parametrize("optimizer", ["greedy", "lazy", "stochastic"])
def test_greedy_gains_are_nonnegative_and_sum_to_f(optimizer) -> None:
    _, blocks, valid, k = _blocks()
    order, gains = S.greedy_gains(k, valid, optimizer=optimizer, seed=0)
    assert (gains >= 0).all() and (gains[~valid] == 0).all()
    for p in range(len(blocks)):
        o = order[p][order[p] >= 0]
        assert sorted(o.tolist()) == np.nonzero(valid[p])[0].tolist()  # every element inserted once
        # Each recorded gain is the true marginal gain at insertion: prefix sums equal f.
        csum = np.cumsum(gains[p, o])
        for t in (1, 2, 5, len(o)):
            assert csum[t - 1] == pytest.approx(S.facility_location(k[p], o[:t]), rel=1e-4)
    again = S.greedy_gains(k, valid, optimizer=optimizer, seed=0)
    assert np.array_equal(order, again[0]) and np.array_equal(gains, again[1])


def test_exact_greedy_gains_do_not_increase_and_lazy_matches_it() -> None:
    _, _, valid, k = _blocks()
    order, gains = S.greedy_gains(k, valid, optimizer="greedy")
    lazy_order, lazy_gains = S.greedy_gains(k, valid, optimizer="lazy")
    for p in range(len(valid)):
        seq = gains[p, order[p][order[p] >= 0]]
        assert (np.diff(seq) <= 1e-5).all()
    assert np.array_equal(order, lazy_order)
    np.testing.assert_allclose(gains, lazy_gains, atol=1e-5)
    # Stochastic greedy with a full sample is exact greedy.
    o, g = S._greedy_batched(k, valid, sample=k.shape[1], rng=np.random.default_rng(0))
    assert np.array_equal(o, order)


def test_taylor_softmax_is_positive_and_normalised_per_block() -> None:
    g = np.array([[0.0, 3.0, -1.0, -5.0], [2.0, 2.0, 0.0, 0.0]])
    valid = np.array([[True, True, True, True], [True, True, True, False]])
    p = S.taylor_softmax(g, valid)
    assert (p[valid] > 0).all() and (p[~valid] == 0).all()
    np.testing.assert_allclose(p.sum(1), 1.0)
    num = 1 + g[0] + g[0] ** 2 / 2
    np.testing.assert_allclose(p[0], num / num.sum())
    # Temperature divides the gains first.
    np.testing.assert_allclose(S.taylor_softmax(g, valid, 2.0), S.taylor_softmax(g / 2, valid))
    with pytest.raises(TLMError, match="temperature"):
        S.taylor_softmax(g, valid, 0.0)


def test_sampled_subsets_are_unique_inside_blocks_and_sized_by_block() -> None:
    x = np.random.default_rng(0).normal(size=(1003, 5))
    plan = S.plan_selection(x, num_examples=1003, fraction=0.25, partitions=9, seed=2)
    assert (plan.probs > 0).all()
    sizes = (plan.blocks >= 0).sum(1)
    for b in range(len(sizes)):
        ids = plan.blocks[b][plan.blocks[b] >= 0]
        np.testing.assert_allclose(plan.probs[ids].sum(), 1.0)
    shares = plan.block_shares()
    np.testing.assert_array_equal(shares, np.minimum(np.ceil(sizes * plan.subset_size / 1003),
                                                     sizes - 1))
    for seed in range(3):
        sub = plan.sample(seed)
        assert len(np.unique(sub)) == len(sub)
        k = plan.subset_size
        assert k <= len(sub) <= k + len(sizes)  # |S| ~ k: per-block shares round up
        for b in range(len(sizes)):
            inside = np.isin(sub, plan.blocks[b])
            assert inside.sum() == shares[b]  # share proportional to block size
    assert np.array_equal(plan.sample(5), plan.sample(5))
    assert not np.array_equal(plan.sample(5), plan.sample(6))


def test_sampling_frequencies_follow_the_probabilities() -> None:
    # One block of 4 with one draw per subset: each element's draw rate is exactly p.
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    plan = S.SelectionPlan(np.arange(4)[None, :], np.zeros(4), probs, fraction=0.2)
    assert plan.block_shares().tolist() == [1]
    counts = np.bincount(np.concatenate([plan.sample(s) for s in range(4000)]), minlength=4)
    np.testing.assert_allclose(counts / 4000, probs, atol=0.025)


def test_centring_restores_an_informative_kernel_for_collinear_features() -> None:
    # A dominant shared direction (as in a barely trained model's pooled states) plus detail.
    rng = np.random.default_rng(0)
    x = 50.0 + rng.normal(size=(400, 16))
    assert S.mean_cosine(x) > 0.99
    assert abs(S.mean_cosine(x - x.mean(0))) < 0.01
    flat = S.plan_selection(x, num_examples=400, fraction=0.25, partitions=2)
    centred = S.plan_selection(x, num_examples=400, fraction=0.25, partitions=2, center=True)
    assert (flat.gains < 0.01).mean() > 0.9  # gains vanish after each block's first pick
    assert (centred.gains < 0.01).mean() < 0.1
    np.testing.assert_array_equal(flat.blocks, centred.blocks)  # same partition either way
    assert S.mean_cosine(np.ones((1, 3))) == 1.0
    np.testing.assert_allclose(S.mean_cosine(np.eye(3)), 0.0, atol=1e-12)


def test_random_method_is_uniform_and_ingenious_needs_features() -> None:
    plan = S.plan_selection(None, num_examples=50, fraction=0.5, partitions=2, method="random")
    np.testing.assert_allclose(plan.probs, 1 / 25)
    with pytest.raises(TLMError, match="feature row per example"):
        S.plan_selection(None, num_examples=50, fraction=0.5)
    with pytest.raises(TLMError, match="fraction"):
        S.plan_selection(None, num_examples=50, fraction=0.0, method="random")


def test_plan_save_load_round_trip(tmp_path) -> None:
    x = np.random.default_rng(0).normal(size=(40, 3))
    plan = S.plan_selection(x, num_examples=40, fraction=0.3, partitions=3)
    plan.save(tmp_path / "p.npz")
    back = S.SelectionPlan.load(tmp_path / "p.npz")
    assert np.array_equal(back.blocks, plan.blocks) and np.array_equal(back.probs, plan.probs)
    assert back.fraction == plan.fraction and back.method == "ingenious"


# ----------------------------------------------------------------------------- schedule

SPECIAL = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=64)


def _source(n=37):
    # Document i is the single token 5 + i, so a row names its example.
    arrays = TokenArrays.from_docs([np.array([5 + i]) for i in range(n)])
    return ExampleSource(arrays, SPECIAL, max_len=4)


def _ids(batch):
    return (batch["input_ids"][:, 1] - 5).tolist()


def test_schedule_warm_start_equals_full_data_pipeline_then_refreshes_on_schedule() -> None:
    src = _source()
    plan = S.plan_selection(None, num_examples=37, fraction=0.3, partitions=3, method="random")
    sched = S.SubsetSchedule(37, 8, seed=11, warm_steps=5, refresh_every=4, plan=plan)
    ds = S.make_scheduled_dataset(src, sched, shard=ShardInfo())
    full = make_dataset(src, 8, seed=11, shard=ShardInfo())
    for g in range(5):  # warm start: exactly the full-data run's batches
        assert _ids(ds[g]) == _ids(full[g])
        assert sched.phase(g) == -1
    probs_before = plan.probs.copy()
    subsets = {}
    for g in range(5, 25):
        q = (g - 5) // 4
        assert sched.phase(g) == q
        subsets.setdefault(q, sched.subset(q))
        assert set(_ids(ds[g])) <= set(subsets[q].tolist())
        assert ds[g]["index"].tolist() == list(range(8))
    # The subset changes at every refresh step W + qR and p is never recomputed.
    for q in range(1, 5):
        assert not np.array_equal(subsets[q], subsets[q - 1])
    np.testing.assert_array_equal(plan.probs, probs_before)
    # Phase q reads its subset in a shuffled pass before repeating any example.
    m = len(subsets[0])
    seen = [i for g in range(5, 9) for i in _ids(ds[g])]
    assert len(set(seen[:m])) == m
    # R = 0: one subset forever.
    once = S.SubsetSchedule(37, 8, seed=11, warm_steps=2, refresh_every=0, plan=plan)
    assert {once.phase(g) for g in range(2, 40)} == {0}


def test_schedule_batches_split_over_processes_like_make_dataset() -> None:
    src = _source()
    plan = S.plan_selection(None, num_examples=37, fraction=0.5, partitions=2, method="random")
    sched = S.SubsetSchedule(37, 8, seed=1, warm_steps=2, refresh_every=3, plan=plan)
    whole = S.make_scheduled_dataset(src, sched, shard=ShardInfo())
    parts = [S.make_scheduled_dataset(src, sched, shard=ShardInfo(i, 2)) for i in range(2)]
    for g in range(8):
        assert _ids(parts[0][g]) + _ids(parts[1][g]) == _ids(whole[g])
        assert parts[1][g]["index"].tolist() == [4, 5, 6, 7]


def test_iterator_state_resumes_the_schedule_exactly() -> None:
    src = _source()
    plan = S.plan_selection(None, num_examples=37, fraction=0.3, partitions=3, method="random")

    def it():
        sched = S.SubsetSchedule(37, 8, seed=3, warm_steps=3, refresh_every=2, plan=plan)
        return make_iterator(S.make_scheduled_dataset(src, sched, shard=ShardInfo()))

    a = it()
    ref = [_ids(next(a)) for _ in range(12)]
    b = it()
    for _ in range(7):
        next(b)
    state = b.get_state()
    c = it()
    c.set_state(state)
    assert [_ids(next(c)) for _ in range(5)] == ref[7:]


def test_schedule_without_plan_refuses_after_warm_start() -> None:
    sched = S.SubsetSchedule(37, 8, seed=0, warm_steps=2, refresh_every=1)
    sched.example_ids(1)
    with pytest.raises(TLMError, match="without a plan"):
        sched.example_ids(2)


# ----------------------------------------------------------------------------- features


def test_features_are_invariant_to_padding_length() -> None:
    import dataclasses

    import jax

    from tlm_jax.config import ModelConfig
    from tlm_jax.models import build_model, init_variables
    from tlm_jax.sharding import unbox
    from tlm_jax.train.docscore import example_features

    mcfg = dataclasses.replace(ModelConfig(), hidden=16, heads=2, intermediate=32, layers=2,
                               vocab_size=128, max_len=32)
    model = build_model(mcfg)
    variables = unbox(init_variables(model, jax.random.PRNGKey(0), 32))
    docs = [np.array([2, 9, 17, 33, 3]), np.array([2, 40, 41, 3]), np.array([2, 7, 3])]

    def rows(length):
        out = np.zeros((len(docs), length), np.int32)
        for i, d in enumerate(docs):
            out[i, :len(d)] = d
        return lambda ids: out[ids]

    feats = {}
    for layer in (-1, 0):
        short = example_features(model, variables, rows(8), 3, pad=0, layer=layer, batch=2)
        long = example_features(model, variables, rows(32), 3, pad=0, layer=layer, batch=2)
        assert short.shape == (3, 16)
        np.testing.assert_allclose(short, long, atol=1e-5)
        feats[layer] = short
    assert not np.allclose(feats[0], feats[-1])  # layer 0 is not the final layer
    with pytest.raises(TLMError, match="layer 2 does not exist"):
        example_features(model, variables, rows(8), 3, pad=0, layer=2)


# ----------------------------------------------------------------------------- the loop

TINY = ["model.hidden=32", "model.layers=2", "model.heads=4", "model.intermediate=64",
        "model.max_len=32", "data.max_len=32", "data.synthetic_docs=300", "data.vocab_size=1000",
        "train.batch_size=16", "optim.warmup_steps=2", "optim.lr=3e-3", "train.steps=10",
        "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=4",
        "train.keep_checkpoints=5", "train.progress=false", "train.tensorboard=false",
        "train.async_checkpoint=false", "data.selection.method=ingenious",
        "data.selection.fraction=0.25", "data.selection.refresh_every=3",
        "data.selection.partitions=4"]


def test_pretrain_with_ingenious_resumes_exactly(tmp_path) -> None:
    """Warm start, plan at step W, refreshes; deleting checkpoints and resuming (before and
    after W) reproduces every loss and the same plan."""
    from tlm_jax.config import load_config
    from tlm_jax.train.loop import pretrain
    from tlm_jax.train.metrics import read_metrics

    cfg = lambda: load_config(None, [*TINY, "data.selection.warm_steps=5"])  # noqa: E731
    pretrain(cfg(), tmp_path / "ref", log=lambda _: None)
    ref = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "ref")}
    plan = S.SelectionPlan.load(tmp_path / "ref" / "selection.npz")
    info = json.loads((tmp_path / "ref" / "selection.json").read_text())
    assert info["method"] == "ingenious" and info["examples"] == plan.num_examples
    assert -1.0 <= info["mean_cosine"] <= 1.0 and 0.0 <= info["small_gain_fraction"] <= 1.0
    assert [p["start_step"] for p in info["phases"]] == [5, 8]
    assert (plan.gains >= 0).all() and (plan.probs > 0).all()
    assert not np.allclose(plan.probs, plan.probs[0])  # gains differ, so p is not uniform

    for keep_step, label in ((8, "after W"), (4, "before W")):
        work = tmp_path / label.replace(" ", "_")
        shutil.copytree(tmp_path / "ref", work)
        for d in (work / "checkpoints").iterdir():
            if d.name.isdigit() and int(d.name) > keep_step:
                shutil.rmtree(d)
        if keep_step < 5:
            (work / "selection.npz").unlink()
        logs: list[str] = []
        summary = pretrain(cfg(), work, log=logs.append)
        assert summary["start_step"] == keep_step
        assert any("selection (ingenious)" in m for m in logs) == (keep_step < 5), label
        got = read_metrics(work)
        assert [m["step"] for m in got] == list(range(1, 11))
        for m in got:
            assert m["loss"] == ref[m["step"]], (label, m["step"])
        again = S.SelectionPlan.load(work / "selection.npz")
        np.testing.assert_array_equal(again.probs, plan.probs)


def test_selection_config_is_validated() -> None:
    from tlm_jax.config import load_config
    from tlm_jax.train.selection import check_selection

    for bad, match in (("method=best", "method"), ("optimizer=fast", "optimizer"),
                       ("fraction=1.5", "fraction"), ("warm_steps=-1", ">= 0")):
        # Refused when the config loads (the choices/ranges pass) or by the selection check.
        with pytest.raises(TLMError, match=match):
            check_selection(load_config(None, [f"data.selection.{bad}"]).data.selection)


def test_auto_partitions_and_zero_feature_rows() -> None:
    assert S.auto_partitions(1000) == 4 and S.auto_partitions(1) == 1
    x = np.array([[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(S.normalize_rows(x), [[0, 0], [0.6, 0.8]])  # no NaN rows
