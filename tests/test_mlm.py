"""MLM objective: selection rate, 80/10/10 replacement, specials, per-example keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tlm_jax.config import ObjectiveConfig
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.objectives import build_objectives

SPECIAL = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=1000)


def _batch(n=256, length=128, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 1000, (n, length)).astype(np.int32)
    lens = rng.integers(20, length, n)
    for i, L in enumerate(lens):
        ids[i, 0] = SPECIAL.cls
        ids[i, L - 1] = SPECIAL.sep
        ids[i, L:] = SPECIAL.pad
    return {"input_ids": jnp.asarray(ids), "index": jnp.arange(n, dtype=jnp.int32)}, lens


def _mlm(**kw):
    return build_objectives(ObjectiveConfig(**kw), SPECIAL, 128)[0][0]


def test_selection_count_and_specials_never_selected() -> None:
    obj = _mlm()
    batch, lens = _batch()
    inputs, targets = jax.jit(obj.transform)(batch, jax.random.PRNGKey(0))
    w = np.asarray(targets["weights"])
    pos = np.asarray(inputs["masked_positions"])
    ids = np.asarray(batch["input_ids"])
    for i, L in enumerate(lens):
        n_ordinary = L - 2
        assert w[i].sum() == max(1, round(0.15 * n_ordinary))
        sel = pos[i][w[i] > 0]
        assert len(set(sel.tolist())) == len(sel)
        assert np.all((sel > 0) & (sel < L - 1)), "selected a special/pad position"
        np.testing.assert_array_equal(np.asarray(targets["labels"])[i][w[i] > 0], ids[i][sel])
    assert obj.max_predictions == 20


def test_replacement_proportions_80_10_10() -> None:
    obj = _mlm()
    batch, _ = _batch(n=512)
    inputs, targets = obj.transform(batch, jax.random.PRNGKey(1))
    ids, new = np.asarray(batch["input_ids"]), np.asarray(inputs["input_ids"])
    pos, w = np.asarray(inputs["masked_positions"]), np.asarray(targets["weights"]) > 0
    rows = np.repeat(np.arange(ids.shape[0])[:, None], pos.shape[1], 1)
    orig, repl = ids[rows, pos][w], new[rows, pos][w]
    frac_mask = np.mean(repl == SPECIAL.mask)
    frac_keep = np.mean(repl == orig)
    frac_rand = 1 - frac_mask - frac_keep
    n = len(orig)
    assert abs(frac_mask - 0.8) < 4 * np.sqrt(0.16 / n)
    # a random replacement equals the original with prob ~1/995, counted as "keep"
    assert abs(frac_keep - 0.1) < 4 * np.sqrt(0.09 / n) + 0.002
    assert abs(frac_rand - 0.1) < 4 * np.sqrt(0.09 / n) + 0.002
    assert not np.isin(repl[repl != orig], [0, 1, 2, 3]).any(), "random token drew a special id"
    # positions that were not selected are untouched
    changed = ids != new
    sel_mask = np.zeros_like(changed)
    sel_mask[rows[w], pos[w]] = True
    assert not (changed & ~sel_mask).any()


def test_masks_depend_on_example_index_only() -> None:
    """The same example gets the same masks wherever it sits in the (sharded) batch."""
    obj = _mlm()
    batch, _ = _batch(n=8)
    full_in, _ = obj.transform(batch, jax.random.PRNGKey(3))
    half = {k: v[4:] for k, v in batch.items()}
    half_in, _ = obj.transform(half, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(full_in["input_ids"][4:], half_in["input_ids"])


def test_loss_is_weighted_cross_entropy() -> None:
    obj = _mlm()
    logits = jnp.log(jnp.asarray([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]))
    terms = obj.loss({"mlm_logits": logits},
                     {"labels": jnp.asarray([[0, 1]]), "weights": jnp.asarray([[1.0, 0.0]])})
    np.testing.assert_allclose(float(terms.loss_sum), -np.log(0.7), rtol=1e-6)
    assert float(terms.weight_sum) == 1.0
    assert float(terms.metrics["mlm_accuracy"]) == 1.0
