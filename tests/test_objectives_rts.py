"""RTS / C-RTS / SLM: substitution rates, labels, cluster sampling, the C update, losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlm_jax.config import ObjectiveConfig
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.objectives import build_objectives
from tlm_jax.objectives.rts import (
    cluster_substitutes,
    cluster_tables,
    crts_update,
    frequency_clusters,
    sample_cluster_table,
)

SPECIAL = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=200)


def _batch(n=128, length=64, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 200, (n, length)).astype(np.int32)
    lens = rng.integers(10, length, n)
    for i, L in enumerate(lens):
        ids[i, 0] = SPECIAL.cls
        ids[i, L - 1] = SPECIAL.sep
        ids[i, L:] = SPECIAL.pad
    return {"input_ids": jnp.asarray(ids), "index": jnp.arange(n, dtype=jnp.int32)}, lens


def _obj(name, **options):
    cfg = ObjectiveConfig(names=[name], options={name: options})
    return build_objectives(cfg, SPECIAL, 64)[0][0]


def test_rts_rate_labels_and_specials() -> None:
    obj = _obj("rts")
    batch, _ = _batch()
    inputs, t = jax.jit(obj.transform)(batch, jax.random.PRNGKey(0))
    ids, new = np.asarray(batch["input_ids"]), np.asarray(inputs["input_ids"])
    labels, w = np.asarray(t["labels"]), np.asarray(t["weights"])
    eligible = ids > 4
    # weights: 1 exactly on ordinary tokens; special/pad positions are ignored
    np.testing.assert_array_equal(w > 0, eligible)
    # label 1 exactly where the token changed
    np.testing.assert_array_equal(labels == 1, ids != new)
    assert not ((ids != new) & ~eligible).any(), "a special/pad position was substituted"
    # Bernoulli(0.15) selection over eligible tokens, within 4 binomial sd
    n = eligible.sum()
    frac = (labels[eligible] == 1).mean()
    assert abs(frac - 0.15) < 4 * np.sqrt(0.15 * 0.85 / n)
    # substitutes are ordinary ids in range
    assert new[ids != new].min() >= 5 and new.max() < 200
    # same key -> same corruption
    again, _ = jax.jit(obj.transform)(batch, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(again["input_ids"]), new)


def test_rts_substitutes_are_uniform_over_the_other_ordinary_ids() -> None:
    obj = _obj("rts", rate=1.0)
    ids = jnp.full((400, 64), 7, jnp.int32)  # every token is id 7
    inputs, _ = jax.jit(obj.transform)({"input_ids": ids, "index": jnp.arange(400)},
                                       jax.random.PRNGKey(1))
    subs = np.asarray(inputs["input_ids"]).ravel()
    assert not (subs == 7).any()
    counts = np.bincount(subs, minlength=200)[5:]
    counts = np.delete(counts, 7 - 5)  # 194 possible substitutes
    expected = len(subs) / 194
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 194 + 6 * np.sqrt(2 * 194), chi2  # ~ chi-square with 193 dof


def test_rts_loss_is_td_weight_times_masked_mean_ce() -> None:
    obj = _obj("rts")
    assert obj.heads == ("token",) and obj.token_classes == 2
    logits = jnp.log(jnp.asarray([[[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]]]))
    t = {"labels": jnp.asarray([[0, 1, 1]]), "weights": jnp.asarray([[1.0, 1.0, 0.0]])}
    terms = obj.loss({"token_logits": logits}, t)
    ce = -(np.log(0.9) + np.log(0.7))
    np.testing.assert_allclose(float(terms.loss_sum), 50 * ce, rtol=1e-5)
    np.testing.assert_allclose(float(terms.metrics["rts_ce"]), ce, rtol=1e-5)
    assert float(terms.weight_sum) == 2.0
    assert float(terms.metrics["rts_accuracy"]) == 2.0
    assert float(terms.metrics["rts_caught"]) == 1.0 and float(terms.metrics["rts_substituted"]) == 1


def _clusters():
    # 195 ordinary ids in 5 clusters by id % 5 (specials -1)
    cluster = np.arange(200) % 5
    return cluster_tables(cluster, SPECIAL)


def test_crts_same_cluster_substitutes() -> None:
    t = _clusters()
    assert t.num_clusters == 5 and t.sizes.sum() == 195 and (t.cluster[:5] == -1).all()
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 200, (50, 40)), jnp.int32)
    new = np.asarray(cluster_substitutes(jax.random.PRNGKey(0), ids, t, SPECIAL, "same"))
    ids = np.asarray(ids)
    assert not (new == ids).any()
    np.testing.assert_array_equal(new % 5, ids % 5)  # m(new) == m(orig)
    assert new.min() >= 5


def test_crts_objective_substitutes_inside_clusters() -> None:
    obj = _obj("crts")
    obj.set_clusters(np.arange(200) % 5)
    batch, _ = _batch()
    inputs, t = jax.jit(obj.transform)(batch, jax.random.PRNGKey(2))
    ids, new = np.asarray(batch["input_ids"]), np.asarray(inputs["input_ids"])
    changed = ids != new
    np.testing.assert_array_equal(np.asarray(t["labels"]) == 1, changed)
    np.testing.assert_array_equal(new[changed] % 5, ids[changed] % 5)


def test_crts_table_sampling_with_ones_is_uniform_over_clusters() -> None:
    t = _clusters()
    ids = jnp.full((20000,), 12, jnp.int32)  # cluster 2
    new = np.asarray(cluster_substitutes(jax.random.PRNGKey(4), ids, t, SPECIAL, "table",
                                         jnp.ones((5, 5)), beta=2.0))
    assert not (new == 12).any()
    counts = np.bincount(new % 5, minlength=5)
    expected = len(new) / 5
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 18.5, counts  # chi-square, 4 dof, p ~ 0.001


def test_cluster_softmax_follows_the_table_row_and_constant_rows_are_safe() -> None:
    valid = jnp.ones(3, bool)
    row = jnp.asarray([[0.0, 5.0, 10.0]])
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)
    draws = np.asarray(jax.vmap(lambda k: sample_cluster_table(row, 2.0, valid, k))(keys))[:, 0]
    p = np.exp(2.0 * np.asarray([0, 0.5, 1.0]))
    p /= p.sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / len(draws), p, atol=0.015)
    flat = sample_cluster_table(jnp.asarray([[3.0, 3.0, 3.0]]), 2.0, valid, keys[0])
    assert 0 <= int(flat[0]) < 3  # divisor 1 for a constant row: no NaN


def test_crts_update_counts_misses_and_catches_only_on_substitutions() -> None:
    cluster = jnp.asarray(np.arange(200) % 5)
    table = jnp.ones((5, 5))
    orig = jnp.asarray([[10, 11, 12, 13]])  # clusters 0, 1, 2, 3
    new = jnp.asarray([[16, 11, 14, 13]])  # 10->16 (0->1), unchanged, 12->14 (2->4), unchanged
    pred = jnp.asarray([[0, 0, 1, 1]])  # miss, -, catch, -
    att = jnp.ones((1, 4), bool)
    out = np.asarray(crts_update(table, cluster, orig, new, pred, att))
    expect = np.ones((5, 5))
    expect[0, 1] += 1  # missed swap
    expect[2, 4] -= 1  # caught swap
    np.testing.assert_array_equal(out, expect)
    # an unattended position does not count
    out2 = np.asarray(crts_update(table, cluster, orig, new, pred, att.at[0, 0].set(False)))
    assert out2[0, 1] == 1.0


def test_frequency_clusters_group_tokens_of_similar_frequency() -> None:
    counts = np.zeros(200)
    counts[5:] = np.arange(195)[::-1] * 10  # id 5 most frequent
    cluster = frequency_clusters(counts, SPECIAL, 4)
    assert (cluster[:5] == -1).all()
    np.testing.assert_array_equal(np.bincount(cluster[5:]), [49, 49, 49, 48])
    assert cluster[5] == 0 and cluster[199] == 3
    assert np.all(np.diff(cluster[5:]) >= 0)  # monotone in frequency rank


def test_slm_swaps_exactly_the_selected_positions_and_predicts_originals() -> None:
    obj = _obj("slm")
    batch, lens = _batch()
    inputs, t = jax.jit(obj.transform)(batch, jax.random.PRNGKey(5))
    ids, new = np.asarray(batch["input_ids"]), np.asarray(inputs["input_ids"])
    pos, w = np.asarray(inputs["masked_positions"]), np.asarray(t["weights"]) > 0
    assert not (new == SPECIAL.mask).any(), "SLM never inputs [MASK]"
    for i, L in enumerate(lens):
        sel = pos[i][w[i]]
        assert len(sel) == max(1, round(0.15 * (L - 2)))
        np.testing.assert_array_equal(np.asarray(t["labels"])[i][w[i]], ids[i][sel])
        changed = np.nonzero(ids[i] != new[i])[0]
        np.testing.assert_array_equal(np.sort(sel), changed)  # every selected token changed
        assert np.all(new[i][sel] >= 5)


@pytest.mark.parametrize("name", ["rts", "slm"])
def test_objectives_depend_on_example_index_only(name) -> None:
    obj = _obj(name)
    batch, _ = _batch(n=8)
    fn = jax.jit(obj.transform)
    full, _ = fn(batch, jax.random.PRNGKey(3))
    half, _ = fn({k: v[4:] for k, v in batch.items()}, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(full["input_ids"][4:], half["input_ids"])
