"""Building blocks shared by the encoder and decoder.

Every parameter carries logical axis names (see :mod:`tlm_jax.sharding`). Every
matmul asks XLA for float32 accumulation (``preferred_element_type``): on CPU a
bf16 x bf16 -> bf16 dot is several times slower than the same dot accumulating in
f32, and on accelerators f32 accumulation is what one wants anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from tlm_jax.models import precision
from tlm_jax.models.attention import attention, attention_rows
from tlm_jax.models.dropout import keep_mask, keep_probability
from tlm_jax.models.fused_attention import fused_attention
from tlm_jax.models.fused_attention import supported as fused_supported
from tlm_jax.models.linear import DEFAULT_INIT, Dense, Dtype, LinearSpec
from tlm_jax.models.sparse import sparse_projection
from tlm_jax.sharding import per_shard

_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


@jax.custom_vjp
def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU, ``x * (1 + erf(x / sqrt 2)) / 2``: the formula of torch and Hugging Face BERT.

    ``jax.nn.gelu(approximate=False)`` evaluates the same function through ``erfc``, whose
    two-branch approximation took twice as long on a CPU (3.0 vs 1.4 ms for a [4096, 1024]
    activation); the two differ only where GELU is below 1e-7 (x < -5). Computed in f32.
    The backward is the closed form ``g * (Phi(x) + x phi(x))`` in one pass over the saved
    input; JAX's product rule materialised both terms in f32 and added them (~7 ms per layer
    of the bert-6-cpu step).
    """
    xf = x.astype(jnp.float32)
    return (0.5 * xf * (1.0 + jax.lax.erf(xf * _SQRT_HALF))).astype(x.dtype)


def _gelu_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return gelu_erf(x), x


def _gelu_bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    xf = x.astype(jnp.float32)
    cdf = 0.5 * (1.0 + jax.lax.erf(xf * _SQRT_HALF))
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * xf * xf)
    return ((g.astype(jnp.float32) * (cdf + xf * pdf)).astype(g.dtype),)


gelu_erf.defvjp(_gelu_fwd, _gelu_bwd)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The MLP nonlinearity by name (BERT uses the exact erf GELU)."""
    return {
        "gelu": gelu_erf,
        "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
    }[name]


def projection(spec: LinearSpec | None, features: Sequence[int], axes: Sequence[str | None], *,
               name: str, contract: int = 1, groups: int = 1, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32,
               kernel_init: Callable = DEFAULT_INIT) -> nn.Module:
    """A :class:`Dense`, or its ``spec.kind`` counterpart (same name, same logical axes).

    ``groups``: the first output dim holds that many separate matrices (the fused
    ``[embed, 3, heads, kv]`` QKV kernel is q, k and v): sparse layers draw a support /
    mask and low-rank factors per matrix, as for the papers' separate projections.
    """
    if spec is None or spec.kind == "dense":
        return Dense(features, axes, contract=contract, dtype=dtype, param_dtype=param_dtype,
                     kernel_init=kernel_init, name=name)
    return sparse_projection(spec, features, axes, name=name, contract=contract, groups=groups,
                             dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float,
               dtype: Dtype) -> jax.Array:
    """LayerNorm over the last axis computed in float32; the result in ``dtype``."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(dtype)


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 with named ``norm`` parameters."""

    eps: float = 1e-12
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                                 ("norm",)), (h,), self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                               ("norm",)), (h,), self.param_dtype)
        return layer_norm(x, scale, bias, self.eps, self.dtype)


def use_fused_attention(impl: str, length: int, head_dim: int, dtype: Dtype,
                        causal: bool = False) -> bool:
    """Whether ``model.attention_impl`` picks the fused kernels for this shape.

    ``fused`` always (its own error names an unsupported shape; off a GPU it runs Pallas's
    interpreter, which is slow and meant for tests); ``auto`` only where the kernels compile
    and were measured faster (a GPU, a supported shape, an encoder: the causal variant has
    not yet been timed on a GPU); ``xla`` never.
    """
    if impl == "fused":
        return True
    return (impl == "auto" and not causal and jax.default_backend() == "gpu"
            and fused_supported(length, head_dim, dtype))


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection.

    The fused ``[embed, 3, heads, kv]`` kernel gives XLA one large matmul instead
    of three small ones; heads are the tensor-parallel axis.
    """

    heads: int
    head_dim: int
    dropout: float = 0.0
    causal: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_std: float = 0.02
    linear: LinearSpec | None = None  # None = dense projections
    impl: str = "auto"  # xla | fused | auto (model.attention_impl)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool,
                 queries: int | jax.Array | None = None) -> jax.Array:
        """Attention output ``[batch, length, hidden]``, or ``[batch, n, hidden]``.

        ``queries``: compute the output of some positions only (each still attends to every
        key): the first ``n`` (an int) or those at positions ``[batch, n]``; for a last layer
        read only at [CLS] or at the masked positions.
        """
        hidden = x.shape[-1]
        init = nn.initializers.normal(self.init_std)
        qkv = projection(self.linear, (3, self.heads, self.head_dim),
                         ("embed", None, "heads", "kv"), groups=3, dtype=self.dtype,
                         param_dtype=self.param_dtype, kernel_init=init, name="qkv")(x)
        qkv = nn.with_logical_constraint(qkv, ("batch", "length", None, "heads", "kv"))
        keep, keep_prob = None, 1.0
        if self.dropout > 0 and not deterministic:
            b, s = qkv.shape[:2]
            n = s if queries is None else queries if isinstance(queries, int) else queries.shape[1]
            keep = keep_mask(self.make_rng("dropout"), (b, self.heads, n, s), self.dropout)
            keep_prob = keep_probability(self.dropout)
        # mask: [batch, key] validity (padding); causal adds the triangle.
        if queries is not None:
            if self.causal:
                raise ValueError("queries= is for a bidirectional encoder")
            ctx = attention_rows(qkv, mask[:, None, None, :].astype(bool), queries, keep=keep,
                                 keep_prob=keep_prob, dtype=self.dtype)
        elif use_fused_attention(self.impl, x.shape[1], self.head_dim, self.dtype, self.causal):
            def fused(qkv: jax.Array, mask: jax.Array, *keep: jax.Array) -> jax.Array:
                return fused_attention(qkv, mask, keep=keep[0] if keep else None,
                                       causal=self.causal, keep_prob=keep_prob,
                                       dtype=self.dtype, interpret=jax.default_backend() != "gpu")

            # XLA cannot partition a Pallas kernel: on a mesh each device runs it on its own
            # batch and head shard (attention is independent across both).
            args, axes = [qkv, mask], [("batch", "length", None, "heads", "kv"), ("batch", "length")]
            if keep is not None:
                args.append(keep)
                axes.append(("batch", "heads", None, None))
            ctx = per_shard(fused, axes, ("batch", "length", "heads", "kv"))(*args)
        else:
            allowed = mask[:, None, None, :].astype(bool)
            if self.causal:
                length = x.shape[1]
                allowed = allowed & jnp.tril(jnp.ones((length, length), bool))[None, None]
            # Scores, softmax and context with a hand-written backward (models/attention.py).
            ctx = attention(qkv, allowed, keep=keep, keep_prob=keep_prob, dtype=self.dtype)
        ctx = nn.with_logical_constraint(ctx.astype(self.dtype), ("batch", "length", "heads", "kv"))
        return projection(self.linear, (hidden,), ("heads", "kv", "embed"), contract=2,
                          dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=init,
                          name="out")(ctx)


class MLP(nn.Module):
    """The position-wise feed-forward block; its columns are tensor-parallel."""

    intermediate: int
    activation: str = "gelu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_std: float = 0.02
    linear: LinearSpec | None = None  # None = dense projections

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.normal(self.init_std)
        h = projection(self.linear, (self.intermediate,), ("embed", "mlp"), dtype=self.dtype,
                       param_dtype=self.param_dtype, kernel_init=init, name="wi")(x)
        h = activation(self.activation)(h)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        return projection(self.linear, (x.shape[-1],), ("mlp", "embed"), dtype=self.dtype,
                          param_dtype=self.param_dtype, kernel_init=init, name="wo")(h)


class Embed(nn.Module):
    """A lookup table ``[num, features]`` with named axes, also usable as a tied decoder."""

    num: int
    features: int
    axes: tuple[str, str] = ("vocab", "embed")
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_std: float = 0.02

    def setup(self) -> None:
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(nn.initializers.normal(self.init_std),
                                                      self.axes),
            (self.num, self.features), self.param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """``x @ embedding.T`` (tied output projection), f32 accumulation."""
        lead = "abcdfghijk"[: x.ndim - 1]
        return precision.einsum(f"{lead}e,ve->{lead}v", x, self.embedding, self.dtype)
