"""GPT decoder, causal LM objective and the sampler: causality, tying, filtering maths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlm_jax.config import ModelConfig, ObjectiveConfig
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.generate import filter_logits, make_sampler, top_k_filter, top_p_filter
from tlm_jax.models import apply_model, build_model, init_variables
from tlm_jax.objectives import build_objectives
from tlm_jax.sharding import unbox

SPECIAL = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=50)
CFG = ModelConfig(arch="gpt", vocab_size=50, hidden=32, layers=2, heads=4, intermediate=64,
                  max_len=16, dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="module")
def gpt():
    model = build_model(CFG)
    variables = jax.jit(lambda r: unbox(init_variables(model, r, 16)))(jax.random.PRNGKey(0))
    return model, variables


_FWD: dict[int, object] = {}


def _forward(model, variables, ids):
    """Jitted (once per model) full forward -> outputs as writable numpy arrays."""
    if id(model) not in _FWD:
        _FWD[id(model)] = jax.jit(
            lambda v, x: apply_model(model, v, {"input_ids": x}, heads=("lm",))[0])
    out = _FWD[id(model)](variables, jnp.asarray(ids))
    return {k: np.array(v) for k, v in out.items()}


def _ids(batch=2, length=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 50, (batch, length)).astype(np.int32)
    ids[:, 0] = SPECIAL.cls
    return ids


def test_changing_a_future_token_leaves_earlier_logits_unchanged(gpt) -> None:
    model, variables = gpt
    ids = _ids()
    out1 = _forward(model, variables, ids)
    ids2 = ids.copy()
    ids2[:, 7] = (ids2[:, 7] + 1 - 5) % 45 + 5
    out2 = _forward(model, variables, ids2)
    a, b = np.asarray(out1["lm_logits"]), np.asarray(out2["lm_logits"])
    assert a.shape == (2, 12, 50)
    np.testing.assert_allclose(a[:, :7], b[:, :7], rtol=1e-6, atol=1e-6)
    assert np.abs(a[:, 7:] - b[:, 7:]).max() > 1e-4, "the changed token must matter from there on"


def test_output_projection_is_the_tied_word_embedding(gpt) -> None:
    model, variables = gpt
    out = _forward(model, variables, _ids())
    emb = np.asarray(variables["params"]["embeddings"]["word"]["embedding"])
    np.testing.assert_allclose(np.asarray(out["lm_logits"]), np.asarray(out["hidden"]) @ emb.T,
                               rtol=1e-4, atol=1e-4)
    assert "lm_head" not in variables["params"] and "mlm" not in variables["params"]


def test_clm_targets_are_next_tokens_on_non_pad_positions() -> None:
    obj = build_objectives(ObjectiveConfig(names=["clm"]), SPECIAL, 8)[0][0]
    ids = jnp.asarray([[2, 10, 11, 12, 3, 0, 0, 0]])
    inputs, t = obj.transform({"input_ids": ids, "index": jnp.arange(1)}, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(t["labels"][0], [10, 11, 12, 3, 0, 0, 0, 0])
    np.testing.assert_array_equal(t["weights"][0], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(inputs["input_ids"], ids)
    # loss = sum of -log p(next) over weighted positions
    logits = jax.random.normal(jax.random.PRNGKey(1), (1, 8, 50))
    terms = obj.loss({"lm_logits": logits}, t)
    logp = np.asarray(jax.nn.log_softmax(logits, -1))[0]
    expect = -sum(logp[i, int(t["labels"][0, i])] for i in range(4))
    np.testing.assert_allclose(float(terms.loss_sum), expect, rtol=1e-5)
    assert float(terms.weight_sum) == 4.0


def test_clm_on_an_encoder_fails_with_a_fix() -> None:
    from tlm_jax.errors import TLMError

    obj = build_objectives(ObjectiveConfig(names=["clm"]), SPECIAL, 8)[0][0]
    with pytest.raises(TLMError, match="model.arch=gpt"):
        obj.loss({"mlm_logits": jnp.zeros((1, 1, 50))}, {"labels": jnp.zeros((1, 8), jnp.int32),
                                                         "weights": jnp.zeros((1, 8))})


def test_top_k_keeps_exactly_the_k_largest() -> None:
    logits = jnp.asarray([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
    out = np.asarray(top_k_filter(logits, 2))
    assert np.all((out > -1e29).sum(-1) == 2)
    np.testing.assert_array_equal(out[0] > -1e29, [False, True, False, True, False])
    np.testing.assert_array_equal(out[0][[1, 3]], [3.0, 2.0])  # kept logits unchanged
    np.testing.assert_array_equal(np.asarray(top_k_filter(logits, 0)), logits)  # 0 = off
    np.testing.assert_array_equal(np.asarray(top_k_filter(logits, 99)), logits)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = np.asarray([0.5, 0.2, 0.15, 0.1, 0.05])
    logits = jnp.log(jnp.asarray(probs))[None]
    kept = lambda p: np.asarray(top_p_filter(logits, p))[0] > -1e29  # noqa: E731
    np.testing.assert_array_equal(kept(0.5), [True, False, False, False, False])
    np.testing.assert_array_equal(kept(0.6), [True, True, False, False, False])
    np.testing.assert_array_equal(kept(0.7), [True, True, False, False, False])  # 0.5+0.2 >= 0.7
    np.testing.assert_array_equal(kept(0.71), [True, True, True, False, False])
    np.testing.assert_array_equal(kept(0.01), [True, False, False, False, False])
    assert kept(1.0).all()
    # renormalised distribution of the filtered logits
    p = np.asarray(jax.nn.softmax(top_p_filter(logits, 0.8)))[0]
    np.testing.assert_allclose(p[:3], probs[:3] / probs[:3].sum(), rtol=1e-5)


def test_filter_order_bans_then_temperature_then_k_then_p() -> None:
    logits = jnp.asarray([[4.0, 3.0, 2.0, 1.0]])
    banned = jnp.asarray([True, False, False, False])
    out = np.asarray(filter_logits(logits, banned, 2.0, 2, 1.0))[0]
    np.testing.assert_allclose(out[1:3], [1.5, 1.0])  # temperature 2 divides the logits
    assert out[0] < -1e20 and out[3] < -1e20  # banned, and outside the top-2 of the rest


def test_greedy_sampling_is_deterministic_and_is_argmax(gpt) -> None:
    model, variables = gpt
    sample = make_sampler(model, eos=SPECIAL.sep, pad=SPECIAL.pad)
    buf = np.zeros((2, 10), np.int32)
    buf[:, 0] = SPECIAL.cls
    buf[:, 1] = [7, 9]
    banned = jnp.zeros(50, bool).at[jnp.asarray([0, 1, 2, 4])].set(True)
    args = (variables["params"], jnp.asarray(buf), jnp.asarray([2, 2]), jax.random.PRNGKey(0),
            banned, jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0), jnp.bool_(True))
    a = np.asarray(sample(*args))
    b = np.asarray(sample(*args[:3], jax.random.PRNGKey(99), *args[4:]))
    np.testing.assert_array_equal(a, b)  # greedy ignores the seed
    # reference: step-by-step argmax of the full forward
    ref = buf.copy()
    done = np.zeros(2, bool)
    for i in range(2, 10):
        logits = _forward(model, variables, ref)["lm_logits"][:, i - 1]
        logits[:, np.asarray(banned)] = -np.inf
        nxt = np.where(done, SPECIAL.pad, logits.argmax(-1))
        ref[:, i] = nxt
        done |= nxt == SPECIAL.sep
    np.testing.assert_array_equal(a, ref)


def test_sampling_never_emits_banned_ids_and_respects_prompts(gpt) -> None:
    model, variables = gpt
    sample = make_sampler(model, eos=SPECIAL.sep, pad=SPECIAL.pad)
    buf = np.zeros((16, 12), np.int32)
    buf[:, 0] = SPECIAL.cls
    buf[:8, 1:4] = 11  # rows 0-7 have a 4-token prompt, rows 8-15 a 1-token prompt
    start = np.asarray([4] * 8 + [1] * 8, np.int32)
    banned = jnp.zeros(50, bool).at[jnp.arange(0, 50, 2)].set(True)  # every even id
    out = np.asarray(sample(variables["params"], jnp.asarray(buf), jnp.asarray(start),
                            jax.random.PRNGKey(3), banned, jnp.float32(1.5), jnp.int32(0),
                            jnp.float32(1.0), jnp.bool_(False)))
    np.testing.assert_array_equal(out[:8, :4], buf[:8, :4])
    gen = np.concatenate([out[:8, 4:].ravel(), out[8:, 1:].ravel()])
    gen = gen[gen != SPECIAL.pad]  # [PAD] only after [SEP]
    assert len(gen) and np.all(gen % 2 == 1), "a banned (even) id was sampled"


def test_cached_decode_step_matches_the_full_forward(gpt) -> None:
    from tlm_jax.models.gpt import decode_step, init_cache

    model, variables = gpt
    ids = jnp.asarray(_ids(batch=3, length=10, seed=4))
    full = _forward(model, variables, ids)["lm_logits"]
    step = jax.jit(lambda tok, pos, kv: decode_step(CFG, variables["params"], tok, pos, kv))
    kv = init_cache(CFG, 3, 10)
    for pos in range(10):
        logits, kv = step(ids[:, pos], jnp.int32(pos), kv)
        np.testing.assert_allclose(np.asarray(logits), full[:, pos], rtol=1e-4, atol=1e-4)


def test_cached_and_uncached_samplers_agree(gpt) -> None:
    model, variables = gpt
    buf = np.zeros((4, 12), np.int32)
    buf[:, 0] = SPECIAL.cls
    buf[:2, 1:3] = 9
    start = jnp.asarray([3, 3, 1, 1], jnp.int32)
    banned = jnp.zeros(50, bool).at[jnp.asarray([0, 1, 2, 4])].set(True)
    outs = []
    for cache in (True, False):
        fn = make_sampler(model, eos=SPECIAL.sep, pad=SPECIAL.pad, cache=cache)
        outs.append(np.asarray(fn(variables["params"], jnp.asarray(buf), start,
                                  jax.random.PRNGKey(7), banned, jnp.float32(1.0), jnp.int32(5),
                                  jnp.float32(0.9), jnp.bool_(False))))
    np.testing.assert_array_equal(outs[0], outs[1])
