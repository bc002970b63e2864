"""Fused attention for short sequences: Pallas (Triton) kernels for a GPU.

The XLA attention (:mod:`tlm_jax.models.attention`) writes the ``[batch, heads, L, L]``
scores, probabilities and their gradients to memory several times per layer: on an H200,
BERT-base at 256 x 128 spends ~14 ms of a 70 ms step there (``benchmarks/op_profile.py``).
Pretraining sequences are short (128-512), so a whole key row fits on chip and one program
can do a (query block, batch, head) tile from the inputs to the context without writing a
score: the forward keeps only the row log-sum-exp, the backward recomputes the
probabilities from it (FlashAttention's recipe, with the key loop collapsed to one block).

Dropout on the probabilities takes the same keep mask as the XLA path (drawn outside, read
as uint8), so both paths train the same model and a test can compare them exactly.

Limits (checked by :func:`supported`): power-of-two sequence length 16-256 and head size
16-128, compute dtype bf16/f16, attention masks that are key padding plus an optional
causal triangle. ``interpret=True`` runs the same kernels on any backend (the tests do).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

F32 = jnp.float32
_NEG = float(jnp.finfo(F32).min)  # as the XLA path: a fully masked row becomes uniform


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def supported(length: int, head_dim: int, dtype: Any) -> bool:
    """Whether the kernels handle this shape and compute dtype."""
    return (_pow2(length) and 16 <= length <= 256 and _pow2(head_dim) and 16 <= head_dim <= 128
            and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)))


def _dot(a: jax.Array, b: jax.Array, ta: bool = False, tb: bool = False) -> jax.Array:
    return jax.lax.dot_general(a, b, (((0 if ta else 1,), (1 if tb else 0,)), ((), ())),
                               preferred_element_type=F32)


def _scores(q: jax.Array, k: jax.Array, valid: jax.Array, row0: Any, scale: float,
            causal: bool) -> jax.Array:
    s = _dot(q, k, tb=True) * scale
    allowed = jnp.broadcast_to(valid[None, :] != 0, s.shape)
    if causal:
        rows = row0 + jax.lax.broadcasted_iota(jnp.int32, s.shape, 0)
        allowed = allowed & (rows >= jax.lax.broadcasted_iota(jnp.int32, s.shape, 1))
    return jnp.where(allowed, s, _NEG)


def _fwd_kernel(q_ref, k_ref, v_ref, valid_ref, *refs, scale: float, causal: bool,
                keep_scale: float | None, block_q: int) -> None:
    keep_ref = refs[0] if keep_scale is not None else None
    o_ref, lse_ref = refs[-2:]
    s = _scores(q_ref[...], k_ref[...], valid_ref[...], pl.program_id(0) * block_q, scale,
                causal)
    m = jnp.max(s, axis=1)
    p = jnp.exp(s - m[:, None])
    denom = jnp.sum(p, axis=1)
    p = p * (1.0 / denom)[:, None]
    lse_ref[...] = m + jnp.log(denom)
    if keep_ref is not None:
        p = jnp.where(keep_ref[...] != 0, p * keep_scale, 0.0)
    v = v_ref[...]
    o_ref[...] = _dot(p.astype(v.dtype), v).astype(o_ref.dtype)


def _bwd_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, valid_ref, *refs, scale: float,
                causal: bool, keep_scale: float | None, block_q: int) -> None:
    keep_ref = refs[0] if keep_scale is not None else None
    dq_ref, dk_ref, dv_ref = refs[-3:]
    k, v, valid = k_ref[...], v_ref[...], valid_ref[...]
    length, head_dim = k.shape
    dk = jnp.zeros((length, head_dim), F32)
    dv = jnp.zeros((length, head_dim), F32)
    for i in range(length // block_q):  # static: a few query blocks per (batch, head)
        rows = pl.ds(i * block_q, block_q)
        q, do = q_ref[rows, :], do_ref[rows, :]
        p = jnp.exp(_scores(q, k, valid, i * block_q, scale, causal) - lse_ref[rows][:, None])
        dp = _dot(do, v, tb=True)
        if keep_ref is not None:
            keep = keep_ref[rows, :] != 0
            pd = jnp.where(keep, p * keep_scale, 0.0)
            dp = jnp.where(keep, dp * keep_scale, 0.0)
        else:
            pd = p
        dv += _dot(pd.astype(do.dtype), do, ta=True)
        ds = (p * (dp - jnp.sum(dp * p, axis=1)[:, None]) * scale).astype(q.dtype)
        dq_ref[rows, :] = _dot(ds, k).astype(dq_ref.dtype)
        dk += _dot(ds, q, ta=True)
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# (forward query block, backward query block, forward warps, backward warps): the blocks the
# H200 step was measured with (BERT-base at 256 x 128, benchmarks/RESULTS.md), a first choice
# and not yet tuned; sweep with ``python -m benchmarks.attention --fused-blocks 64,32,4,8 ...``.
DEFAULT_BLOCKS = (64, 32, 4, 8)


def _blocks(length: int, blocks: tuple[int, int, int, int] | None) -> tuple[int, int, int, int]:
    bq, bq_bwd, warps, warps_bwd = blocks or DEFAULT_BLOCKS
    bq, bq_bwd = min(bq, length), min(bq_bwd, length)
    if not all(_pow2(x) for x in (bq, bq_bwd, warps, warps_bwd)) or min(bq, bq_bwd) < 16:
        raise ValueError(f"fused attention blocks {blocks}: query blocks must be powers of two "
                         ">= 16 and warps powers of two")
    return bq, bq_bwd, warps, warps_bwd


def _params(interpret: bool, warps: int) -> dict:
    if interpret:
        return {"interpret": True}
    # GPU-only backend: importing it costs ~4 s on a CPU, where the kernels run interpreted.
    from jax.experimental.pallas import triton as plgpu  # noqa: PLC0415 - reason: GPU-only, slow import

    return {"compiler_params": plgpu.CompilerParams(num_warps=warps, num_stages=2)}


def _forward(qkv: jax.Array, valid: jax.Array, keep: jax.Array | None, causal: bool,
             keep_prob: float, interpret: bool, blocks: tuple[int, int, int, int]
             ) -> tuple[jax.Array, jax.Array]:
    b, length, _, h, d = qkv.shape
    flat = qkv.reshape(b, length, 3 * h * d)  # q, k, v of head j are column blocks j, h+j, 2h+j
    bq, _, warps, _ = blocks
    grid = (length // bq, b, h)
    specs = [pl.BlockSpec((None, bq, d), lambda i, n, j: (n, i, j)),
             pl.BlockSpec((None, length, d), lambda i, n, j: (n, 0, h + j)),
             pl.BlockSpec((None, length, d), lambda i, n, j: (n, 0, 2 * h + j)),
             pl.BlockSpec((None, length), lambda i, n, j: (n, 0))]
    args = [flat, flat, flat, valid]
    if keep is not None:
        specs.append(pl.BlockSpec((None, None, bq, length), lambda i, n, j: (n, j, i, 0)))
        args.append(keep)
    kernel = partial(_fwd_kernel, scale=d ** -0.5, causal=causal, block_q=bq,
                     keep_scale=None if keep is None else 1.0 / keep_prob)
    o, lse = pl.pallas_call(
        kernel, grid=grid, in_specs=specs,
        out_specs=[pl.BlockSpec((None, bq, d), lambda i, n, j: (n, i, j)),
                   pl.BlockSpec((None, None, bq), lambda i, n, j: (n, j, i))],
        out_shape=[jax.ShapeDtypeStruct((b, length, h * d), qkv.dtype),
                   jax.ShapeDtypeStruct((b, h, length), F32)],
        name="tlm_attention_fwd", **_params(interpret, warps))(*args)
    return o.reshape(b, length, h, d), lse


def _backward(qkv: jax.Array, valid: jax.Array, keep: jax.Array | None, lse: jax.Array,
              g: jax.Array, causal: bool, keep_prob: float, interpret: bool,
              blocks: tuple[int, int, int, int]) -> jax.Array:
    b, length, _, h, d = qkv.shape
    _, bq, _, warps = blocks
    flat = qkv.reshape(b, length, 3 * h * d)
    block = pl.BlockSpec((None, length, d), lambda n, j: (n, 0, j))
    specs = [block,
             pl.BlockSpec((None, length, d), lambda n, j: (n, 0, h + j)),
             pl.BlockSpec((None, length, d), lambda n, j: (n, 0, 2 * h + j)),
             block,
             pl.BlockSpec((None, None, length), lambda n, j: (n, j, 0)),
             pl.BlockSpec((None, length), lambda n, j: (n, 0))]
    args = [flat, flat, flat, g.reshape(b, length, h * d), lse, valid]
    if keep is not None:
        specs.append(pl.BlockSpec((None, None, length, length), lambda n, j: (n, j, 0, 0)))
        args.append(keep)
    kernel = partial(_bwd_kernel, scale=d ** -0.5, causal=causal, block_q=bq,
                     keep_scale=None if keep is None else 1.0 / keep_prob)
    out = jax.ShapeDtypeStruct((b, length, h * d), qkv.dtype)
    dq, dk, dv = pl.pallas_call(
        kernel, grid=(b, h), in_specs=specs, out_specs=[block] * 3, out_shape=[out] * 3,
        name="tlm_attention_bwd", **_params(interpret, warps))(*args)
    return jnp.stack([x.reshape(b, length, h, d) for x in (dq, dk, dv)], axis=2)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _fused(qkv: jax.Array, valid: jax.Array, keep: jax.Array | None, causal: bool,
           keep_prob: float, dtype: Any, interpret: bool, blocks: tuple) -> jax.Array:
    return _forward(qkv.astype(dtype), valid, keep, causal, keep_prob, interpret, blocks)[0]


def _fused_fwd(qkv: jax.Array, valid: jax.Array, keep: jax.Array | None, causal: bool,
               keep_prob: float, dtype: Any, interpret: bool, blocks: tuple
               ) -> tuple[jax.Array, tuple]:
    x = qkv.astype(dtype)
    ctx, lse = _forward(x, valid, keep, causal, keep_prob, interpret, blocks)
    return ctx, (x, valid, keep, lse, jnp.zeros((0,), qkv.dtype))


def _fused_bwd(causal: bool, keep_prob: float, dtype: Any, interpret: bool,
               blocks: tuple, res: tuple, g: jax.Array) -> tuple:
    x, valid, keep, lse, marker = res
    dqkv = _backward(x, valid, keep, lse, g.astype(dtype), causal, keep_prob, interpret, blocks)
    return dqkv.astype(marker.dtype), None, None


_fused.defvjp(_fused_fwd, _fused_bwd)


def fused_attention(qkv: jax.Array, key_valid: jax.Array, *, causal: bool = False,
                    keep: jax.Array | None = None, keep_prob: float = 1.0,
                    dtype: Any = jnp.bfloat16, interpret: bool = False,
                    blocks: tuple[int, int, int, int] | None = None) -> jax.Array:
    """Softmax attention of ``qkv [batch, length, 3, heads, head_dim]`` in fused kernels.

    The same computation as :func:`tlm_jax.models.attention.attention` with
    ``allowed = key_valid[:, None, None, :]`` (and the causal triangle if ``causal``).

    Args:
        qkv: queries, keys and values stacked on axis 2 (cast to ``dtype``).
        key_valid: ``[batch, length]``, nonzero where a key is a real token.
        causal: also hide later keys from each query.
        keep: optional boolean ``[batch, heads, length, length]`` dropout keep mask.
        keep_prob: the keep probability the kept probabilities are divided by.
        dtype: compute dtype (bf16 or f16; accumulation and softmax are f32).
        interpret: run the kernels in Pallas's interpreter (any backend; slow).
        blocks: ``(forward query block, backward query block, forward warps, backward
            warps)``; default :data:`DEFAULT_BLOCKS`.

    Returns:
        The context ``[batch, length, heads, head_dim]`` in ``dtype``.
    """
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must be [batch, length, 3, heads, head_dim], got {qkv.shape}")
    b, length, _, _, d = qkv.shape
    if not supported(length, d, dtype):
        raise ValueError(f"fused attention needs a power-of-two length in 16..256, head size "
                         f"in 16..128 and bf16/f16; got length {length}, head size {d}, "
                         f"{jnp.dtype(dtype).name}: use model.attention_impl=xla")
    if key_valid.shape != (b, length):
        raise ValueError(f"key_valid must be [batch, length] = {(b, length)}, "
                         f"got {key_valid.shape}")
    keep8 = None if keep is None else keep.astype(jnp.uint8)
    blocks = _blocks(length, None if blocks is None else tuple(blocks))  # checked once, here
    return _fused(qkv, key_valid.astype(jnp.int32), keep8, bool(causal), float(keep_prob),
                  jnp.dtype(dtype), bool(interpret), blocks)
