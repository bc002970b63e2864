"""The fast train step computes what the straightforward f32 computation computes.

The step's speed-relevant choices: MLM logits only at the gathered masked positions
(not dense ``[B, L, V]`` logits), bf16 compute with f32 params / f32 accumulation,
and a jitted step with a donated state. Each is checked against the plain f32
computation (dense logits, no jit) on the same parameters and masks. No timing here:
the timings live in ``benchmarks/``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tlm_jax.config import ModelConfig, ObjectiveConfig, OptimConfig
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.models import apply_model, build_model, init_variables
from tlm_jax.objectives.mlm import MLM
from tlm_jax.sharding import unbox
from tlm_jax.train.optimizer import make_optimizer
from tlm_jax.train.state import TrainState
from tlm_jax.train.step import make_train_step

VOCAB, LEN, BATCH = 512, 32, 4
SPECIAL = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=VOCAB)


def _model(dtype: str = "float32", dropout: float = 0.0):
    cfg = ModelConfig(vocab_size=VOCAB, hidden=64, layers=2, heads=2, intermediate=128,
                      max_len=LEN, dropout=dropout, attention_dropout=dropout, dtype=dtype)
    return build_model(cfg)


def _setup():
    obj = MLM(cfg=ObjectiveConfig(), special=SPECIAL, max_len=LEN, name="mlm")
    rng = np.random.default_rng(0)
    ids = rng.integers(5, VOCAB, (BATCH, LEN)).astype(np.int32)
    ids[:, 0] = SPECIAL.cls
    ids[:, -1] = SPECIAL.sep
    ids[1, LEN - 8:] = SPECIAL.pad  # one padded row
    ids[1, LEN - 9] = SPECIAL.sep
    batch = {"input_ids": jnp.asarray(ids), "index": jnp.arange(BATCH, dtype=jnp.int32)}
    params = unbox(init_variables(_model(), jax.random.key(1), LEN))["params"]
    inputs, targets = obj.transform(batch, jax.random.key(2))
    return obj, batch, params, inputs, targets


def _reference_loss(params, inputs, targets):
    """Straightforward f32: dense logits at every position, then pick the masked ones."""
    out, _ = apply_model(_model("float32"), {"params": params}, inputs, train=False,
                         heads=("mlm_dense",))
    logits = out["mlm_logits_dense"].astype(jnp.float32)  # [B, L, V]
    logp = jax.nn.log_softmax(logits, -1)
    pos = inputs["masked_positions"]
    lp = jnp.take_along_axis(logp, pos[..., None], axis=1)  # [B, P, V]
    nll = -jnp.take_along_axis(lp, targets["labels"][..., None], axis=-1)[..., 0]
    w = targets["weights"]
    return (nll * w).sum() / jnp.maximum(w.sum(), 1.0)


def _fast_loss(params, inputs, targets, obj, dtype):
    out, _ = apply_model(_model(dtype), {"params": params}, inputs, train=False, heads=obj.heads)
    t = obj.loss(out, targets)
    return t.loss_sum / jnp.maximum(t.weight_sum, 1.0)


def _rel(a, b):
    fa = jnp.concatenate([x.ravel() for x in jax.tree.leaves(a)])
    fb = jnp.concatenate([x.ravel() for x in jax.tree.leaves(b)])
    return float(jnp.linalg.norm(fa - fb) / jnp.linalg.norm(fb))


def test_masked_only_logits_match_dense_f32():
    obj, _, params, inputs, targets = _setup()
    with jax.default_matmul_precision("highest"):
        ref, g_ref = jax.value_and_grad(_reference_loss)(params, inputs, targets)
        fast, g_fast = jax.value_and_grad(_fast_loss)(params, inputs, targets, obj, "float32")
    np.testing.assert_allclose(float(fast), float(ref), rtol=1e-5)
    assert _rel(g_fast, g_ref) < 1e-4


def test_bf16_compute_matches_f32_within_bf16_tolerance():
    obj, _, params, inputs, targets = _setup()
    ref, g_ref = jax.value_and_grad(_reference_loss)(params, inputs, targets)
    fast, g_fast = jax.jit(jax.value_and_grad(
        lambda p, i, t: _fast_loss(p, i, t, obj, "bfloat16")))(params, inputs, targets)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g_fast))  # f32 master grads
    np.testing.assert_allclose(float(fast), float(ref), rtol=2e-2)
    assert _rel(g_fast, g_ref) < 5e-2
    # Every parameter's gradient points the same way (cosine), not just the total norm.
    for gf, gr in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref), strict=True):
        if float(jnp.linalg.norm(gr)) > 1e-8:
            cos = jnp.vdot(gf.ravel(), gr.ravel()) / (jnp.linalg.norm(gf) * jnp.linalg.norm(gr))
            assert float(cos) > 0.99


@pytest.mark.parametrize("dtype,rtol,grad_tol", [("float32", 1e-4, 1e-3),
                                                 ("bfloat16", 2e-2, 5e-2)])
def test_jitted_donated_step_matches_reference(dtype, rtol, grad_tol):
    """The compiled step (jit, donated state) on the masks it draws itself vs plain f32."""
    obj, batch, params, _, _ = _setup()
    model = _model(dtype)
    tx, schedule = make_optimizer(dataclasses.replace(OptimConfig(), warmup_steps=0,
                                                      clip_norm=0.0), 10)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=tx.init(params), model_state={},
                       rng=jax.random.PRNGKey(3))
    # The masks the step draws: same derivation as make_train_step.
    mask_rng, _ = jax.random.split(jax.random.fold_in(state.rng, state.step))
    from tlm_jax.objectives.base import with_step  # noqa: PLC0415

    inputs, targets = obj.transform(with_step(batch, state.step), jax.random.fold_in(mask_rng, 0))
    ref, g_ref = jax.value_and_grad(_reference_loss)(params, inputs, targets)
    ref_params = optax.apply_updates(params, tx.update(g_ref, tx.init(params), params)[0])

    step = jax.jit(make_train_step(model, [(obj, 1.0)], tx, schedule), donate_argnums=0)
    host_params = jax.tree.map(np.asarray, params)
    new_state, m = step(jax.tree.map(jnp.array, state), batch)
    np.testing.assert_allclose(float(m["loss"]), float(ref), rtol=rtol)
    np.testing.assert_allclose(float(m["grad_norm"]), float(optax.global_norm(g_ref)),
                               rtol=grad_tol)
    # Parameter updates agree too (AdamW's first step is ~lr*sign(g), so compare deltas).
    d_fast = jax.tree.map(lambda a, b: a - b, new_state.params, host_params)
    d_ref = jax.tree.map(lambda a, b: a - b, ref_params, host_params)
    assert _rel(d_fast, d_ref) < (1e-3 if dtype == "float32" else 0.25)
