"""Scaled dot-product attention over a fused QKV tensor, with a hand-written backward pass.

JAX's automatic transpose of the attention block costs more than its matmuls on a CPU
(bert-6-cpu, batch 32 x 128, bf16; ``benchmarks/op_profile.py``):

* ``q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]`` transposes into three zero-padded
  float32 copies of the whole ``[b, s, 3, h, d]`` tensor that are then added (~9 ms per
  layer); here the three gradients are stacked once, in the compute dtype.
* the backward dots of a bf16 x bf16 -> f32 forward dot receive an f32 cotangent, so XLA
  runs them as f32 matmuls (see :mod:`tlm_jax.models.precision`); here all four backward
  dots are compute-dtype x compute-dtype with f32 accumulation.

The forward is the usual one: scores in f32 accumulation, scaled and masked in f32,
softmax in f32, probabilities rounded to the compute dtype (as torch autocast does) before
dropout and the context matmul. The backward saves the (rounded) probabilities instead of
the scores and uses ``dS = P * (dP - rowsum(dP * P))``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

F32 = jnp.float32


def _probs(q: jax.Array, k: jax.Array, allowed: jax.Array, scale: float) -> jax.Array:
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=F32) * scale
    scores = jnp.where(allowed, scores, jnp.finfo(F32).min)
    return jax.nn.softmax(scores, axis=-1)


def _dropped(p: jax.Array, keep: jax.Array | None, keep_prob: float) -> jax.Array:
    if keep is None:
        return p
    return jnp.where(keep, p * jnp.asarray(1.0 / keep_prob, p.dtype), jnp.zeros((), p.dtype))


def _forward(qkv: jax.Array, allowed: jax.Array, keep: jax.Array | None, keep_prob: float,
             dtype: Any, queries: int | jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    qkv = qkv.astype(dtype)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if queries is not None:
        q = take_rows(q, queries)
    p = _probs(q, k, allowed, q.shape[-1] ** -0.5).astype(dtype)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", _dropped(p, keep, keep_prob), v,
                     preferred_element_type=F32)
    return ctx.astype(dtype), p


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attention(qkv: jax.Array, allowed: jax.Array, keep: jax.Array | None, keep_prob: float,
               dtype: Any) -> jax.Array:
    return _forward(qkv, allowed, keep, keep_prob, dtype)[0]


def _attention_fwd(qkv: jax.Array, allowed: jax.Array, keep: jax.Array | None,
                   keep_prob: float, dtype: Any) -> tuple[jax.Array, tuple]:
    ctx, p = _forward(qkv, allowed, keep, keep_prob, dtype)
    # qkv's own dtype travels as a zero-size marker (an f32 qkv gets an f32 gradient).
    return ctx, (qkv.astype(dtype), p, keep, jnp.zeros((0,), qkv.dtype))


def _attention_bwd(keep_prob: float, dtype: Any, res: tuple, g: jax.Array) -> tuple:
    qkv, p, keep, marker = res
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    scale = q.shape[-1] ** -0.5
    g = g.astype(dtype)
    dv = jnp.einsum("bhqk,bqhd->bkhd", _dropped(p, keep, keep_prob), g,
                    preferred_element_type=F32)
    dp = _dropped(jnp.einsum("bqhd,bkhd->bhqk", g, v, preferred_element_type=F32), keep,
                  keep_prob)
    pf = p.astype(F32)
    # Softmax backward; masked keys have p = 0 and so get no gradient. The 1/sqrt(d) of the
    # forward scores is folded in here.
    ds = (pf * (dp - (dp * pf).sum(-1, keepdims=True)) * scale).astype(dtype)
    dq = jnp.einsum("bhqk,bkhd->bqhd", ds, k, preferred_element_type=F32)
    dk = jnp.einsum("bhqk,bqhd->bkhd", ds, q, preferred_element_type=F32)
    dqkv = jnp.stack([dq, dk, dv], axis=2).astype(marker.dtype)
    return dqkv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(qkv: jax.Array, allowed: jax.Array, *, keep: jax.Array | None = None,
              keep_prob: float = 1.0, dtype: Any = F32) -> jax.Array:
    """Softmax attention of a fused ``qkv [batch, length, 3, heads, head_dim]`` tensor.

    Args:
        qkv: queries, keys and values stacked on axis 2 (any float dtype; cast to ``dtype``).
        allowed: boolean, broadcastable to ``[batch, heads, query, key]``: which keys each
            query may attend to (padding and, for a decoder, the causal triangle).
        keep: optional boolean ``[batch, heads, query, key]`` dropout keep mask on the
            attention probabilities; kept probabilities are divided by ``keep_prob``.
        dtype: compute dtype of the matmul inputs and of the result (accumulation is f32).

    Returns:
        The context ``[batch, length, heads, head_dim]`` in ``dtype``.
    """
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must be [batch, length, 3, heads, head_dim], got {qkv.shape}")
    return _attention(qkv, allowed, keep, float(keep_prob), jnp.dtype(dtype))


def take_rows(x: jax.Array, queries: int | jax.Array) -> jax.Array:
    """Rows of ``x [batch, length, ...]``: the first ``queries`` (an int) or those at the
    positions ``queries [batch, n]``."""
    if isinstance(queries, int):
        return x[:, :queries]
    idx = queries.astype(jnp.int32).reshape(*queries.shape, *(1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def attention_rows(qkv: jax.Array, allowed: jax.Array, queries: int | jax.Array, *,
                   keep: jax.Array | None = None, keep_prob: float = 1.0,
                   dtype: Any = F32) -> jax.Array:
    """Attention of some query positions only, over every key.

    For a last layer whose output is read at a few positions (a [CLS] classifier, the masked
    positions of MLM): the keys and values are the full sequence's, the queries (and so the
    scores, softmax and context) only those rows'. The same computation as
    :func:`attention` restricted to those rows; differentiated by JAX.

    Args:
        qkv: ``[batch, length, 3, heads, head_dim]``.
        allowed: broadcastable to ``[batch, heads, n, key]``.
        queries: ``n`` (the first ``n`` positions, ``1 <= n <= length``) or int positions
            ``[batch, n]``.
        keep: optional dropout keep mask ``[batch, heads, n, key]``.

    Returns:
        The context ``[batch, n, heads, head_dim]`` in ``dtype``.
    """
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must be [batch, length, 3, heads, head_dim], got {qkv.shape}")
    if isinstance(queries, int) and not 1 <= queries <= qkv.shape[1]:
        raise ValueError(f"queries={queries} must be in [1, {qkv.shape[1]}]")
    return _forward(qkv, allowed, keep, float(keep_prob), jnp.dtype(dtype), queries)[0]
