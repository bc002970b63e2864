"""The fused (Pallas) attention kernels against plain attention, run in Pallas's interpreter.

The interpreter executes the kernels' own code (block specs, index maps, the in-kernel
masking, softmax, dropout and the blocked backward) on the CPU; the Triton compilation is
exercised on a GPU by ``python -m benchmarks.attention``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import attention_inputs, reference_attention

from tlm_jax.config import ModelConfig
from tlm_jax.models import apply_model, build_model, init_variables
from tlm_jax.models.attention import attention
from tlm_jax.models.fused_attention import fused_attention, supported
from tlm_jax.models.layers import use_fused_attention
from tlm_jax.sharding import unbox

B, S, H, D = 2, 64, 2, 16  # S = 64 > the backward's 32-row block: two query blocks each
BF16 = jnp.bfloat16


def _inputs(causal: bool, dropout: bool):
    qkv, valid, allowed, keep, g, _ = attention_inputs((B, S, H, D), 21, 0.9, causal, dropout, 3)
    return qkv.astype(BF16), valid.astype(jnp.int32), allowed, keep, g


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
def test_output_and_gradient_match_f32_attention(causal: bool, dropout: bool) -> None:
    qkv, valid, allowed, keep, g = _inputs(causal, dropout)
    fused = lambda x: fused_attention(x, valid, causal=causal, keep=keep,  # noqa: E731
                                      keep_prob=0.9, interpret=True)
    y, vjp = jax.vjp(fused, qkv)
    y_ref, vjp_ref = jax.vjp(lambda x: reference_attention(x, allowed, keep, 0.9), qkv)
    assert y.dtype == BF16 and y.shape == (B, S, H, D)
    np.testing.assert_allclose(np.asarray(y, np.float32), y_ref, rtol=2e-2, atol=2e-2)
    (dx,), (dx_ref,) = vjp(g.astype(BF16)), vjp_ref(g)
    assert dx.dtype == BF16
    scale = float(jnp.abs(dx_ref).max())
    err = float(jnp.abs(dx.astype(jnp.float32) - dx_ref).max())
    assert err < 2e-2 * scale, (err, scale)


def test_agrees_with_the_xla_path_and_masked_keys_get_no_gradient() -> None:
    qkv, valid, allowed, keep, g = _inputs(False, True)
    fused = lambda x: fused_attention(x, valid, keep=keep, keep_prob=0.9,  # noqa: E731
                                      interpret=True)
    xla = lambda x: attention(x, allowed, keep=keep, keep_prob=0.9, dtype=BF16)  # noqa: E731
    (y1, vjp1), (y2, vjp2) = jax.vjp(fused, qkv), jax.vjp(xla, qkv)
    real = np.asarray(valid, bool)[:, :, None, None]  # padded queries attend anyway: skip them
    np.testing.assert_allclose(np.where(real, np.asarray(y1, np.float32), 0),
                               np.where(real, np.asarray(y2, np.float32), 0), rtol=0, atol=3e-2)
    (d1,), (d2,) = vjp1(g.astype(BF16)), vjp2(g.astype(BF16))
    np.testing.assert_allclose(np.asarray(d1, np.float32), np.asarray(d2, np.float32),
                               rtol=0, atol=3e-2 * float(jnp.abs(d2.astype(jnp.float32)).max()))
    # The padded keys/values of example 1 get exactly zero gradient.
    assert float(jnp.abs(d1[1, S - 21:, 1:].astype(jnp.float32)).max()) == 0.0


def test_other_block_sizes_compute_the_same_and_bad_ones_are_refused() -> None:
    qkv, valid, _, keep, g = _inputs(True, True)
    outs = []
    for blocks in (None, (16, 16, 4, 4), (64, 64, 8, 8)):  # 4 / 1 query blocks per program
        f = lambda x, blocks=blocks: fused_attention(  # noqa: E731
            x, valid, causal=True, keep=keep, keep_prob=0.9, interpret=True, blocks=blocks)
        y, vjp = jax.vjp(f, qkv)
        outs.append((np.asarray(y, np.float32), np.asarray(vjp(g.astype(BF16))[0], np.float32)))
    for y, dx in outs[1:]:
        np.testing.assert_allclose(y, outs[0][0], rtol=0, atol=1e-2)
        np.testing.assert_allclose(dx, outs[0][1], rtol=0, atol=2e-2 * np.abs(outs[0][1]).max())
    with pytest.raises(ValueError, match="powers of two"):
        fused_attention(qkv, valid, interpret=True, blocks=(48, 32, 4, 8))


def test_float32_input_gets_a_float32_gradient() -> None:
    qkv, valid, *_ = _inputs(False, False)
    x = qkv.astype(jnp.float32)
    (dx,) = jax.vjp(lambda x: fused_attention(x, valid, interpret=True), x)[1](
        jnp.ones((B, S, H, D), BF16))
    assert dx.dtype == jnp.float32


def test_unsupported_shapes_are_refused_with_the_fix() -> None:
    assert supported(128, 64, BF16) and not supported(96, 64, BF16)
    assert not supported(128, 64, jnp.float32) and not supported(512, 64, BF16)
    qkv = jnp.zeros((1, 24, 3, 2, 16), BF16)
    with pytest.raises(ValueError, match="attention_impl=xla"):
        fused_attention(qkv, jnp.ones((1, 24), jnp.int32), interpret=True)


def test_auto_picks_fused_only_on_a_gpu() -> None:
    on_gpu = jax.default_backend() == "gpu"
    assert use_fused_attention("auto", 128, 64, BF16) == on_gpu
    assert not use_fused_attention("auto", 128, 64, jnp.float32)
    assert not use_fused_attention("auto", 128, 64, BF16, causal=True)
    assert use_fused_attention("fused", 128, 64, BF16)
    assert not use_fused_attention("xla", 128, 64, BF16)


@pytest.mark.parametrize("arch", ["bert", "gpt"])
def test_model_trains_the_same_with_either_attention(arch: str) -> None:
    """A bf16 model with dropout: same loss and gradients from model.attention_impl=fused."""
    cfg = ModelConfig(arch=arch, vocab_size=97, hidden=32, layers=1, heads=2, intermediate=64,
                      max_len=32, dtype="bfloat16", dropout=0.1, attention_dropout=0.1)
    ids = jax.random.randint(jax.random.key(0), (2, 32), 5, 97)
    mask = jnp.ones((2, 32), jnp.int32).at[1, 20:].set(0)
    x = {"input_ids": ids, "attention_mask": mask,
         "masked_positions": jnp.tile(jnp.arange(4)[None], (2, 1))}
    rngs = {"dropout": jax.random.key(7)}

    def loss(params, impl):
        model = build_model(dataclasses.replace(cfg, attention_impl=impl))
        head = "mlm" if arch == "bert" else "lm"
        out, _ = apply_model(model, {"params": params}, x, rngs, train=True, heads=(head,))
        logits = out[f"{head}_logits"].astype(jnp.float32)
        return jnp.mean(jax.nn.logsumexp(logits, -1))

    params = unbox(init_variables(build_model(cfg), jax.random.key(1), 32))["params"]
    (l1, g1), (l2, g2) = (jax.value_and_grad(loss)(params, impl) for impl in ("xla", "fused"))
    np.testing.assert_allclose(float(l1), float(l2), rtol=2e-3)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        tol = 5e-2 * float(jnp.abs(a).max()) + 1e-6
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=tol)


def test_training_on_a_mesh_or_pmap_matches_one_device() -> None:
    """Batch over data x fsdp and heads over tensor: jax.shard_map around the kernels."""
    from tlm_jax.config import load_config
    from tlm_jax.train.loop import run_steps
    from tlm_jax.train.run import build_run

    base = ["model.hidden=64", "model.layers=1", "model.heads=4", "model.intermediate=64",
            "model.max_len=32", "data.max_len=32", "model.dtype=bfloat16",
            "data.synthetic_docs=400", "data.vocab_size=1000", "train.batch_size=16",
            "optim.warmup_steps=2", "optim.lr=3e-3"]

    def losses(overrides: list[str], devices=None, pmap: bool = False) -> np.ndarray:
        run = build_run(load_config(None, [*base, *overrides]), log=lambda _: None,
                        devices=devices)
        return np.array([m["loss"] for m in run_steps(run, 2, pmap=pmap)])

    one = losses(["mesh.data=1", "model.attention_impl=fused"], jax.devices()[:1])
    mesh = losses(["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "model.attention_impl=fused"])
    np.testing.assert_allclose(mesh, one, rtol=1e-3)
    # Under pmap each device runs the kernels on its own batch shard (no mesh, no shard_map).
    pmapped = losses(["train.parallel=pmap", "model.attention_impl=fused"], pmap=True)
    np.testing.assert_allclose(pmapped, one, rtol=1e-2)
