"""Dense layers and the matmul every projection goes through.

The bottom of the model stack: :mod:`tlm_jax.models.sparse` builds its SLTrain / SPDF layers on
:func:`matmul` and :class:`LinearSpec`, and :mod:`tlm_jax.models.layers` chooses between those and
:class:`Dense` by the spec, so neither of those two modules imports the other's user.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tlm_jax.models import precision

Dtype = Any


def dtype_of(name: str) -> jnp.dtype:
    """``"float32"``/``"bfloat16"`` -> jnp dtype."""
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def matmul(x: jax.Array, w: jax.Array, contract: int = 1, dtype: Dtype = jnp.float32,
           bias: jax.Array | None = None) -> jax.Array:
    """``x @ w (+ bias)`` contracting the last ``contract`` dims of x with the first of w.

    Inputs are cast to ``dtype``; accumulation is float32; the result is ``dtype``. In
    bf16 the backward dots stay bf16 with f32 accumulation (:mod:`tlm_jax.models.precision`).
    The bias is added to the f32 accumulator (one rounding, as a fused GEMM epilogue does).
    Its gradient is then a float32 sum over the tokens; added in bf16, the sum was a bf16
    reduction that XLA:CPU splits into a slow reduce-window (~19 ms per [4096, 1024] bias
    gradient, 0.23 s of a 1.1 s bert-6-cpu step).
    """
    spec = precision.matmul_spec(x.ndim, w.ndim, contract)
    y = precision.einsum(spec, x, w, dtype)  # float32
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(dtype)


class Dense(nn.Module):
    """A dense layer over the last ``len(in_axes)`` input dims with named axes.

    Attributes:
        features: output feature shape (e.g. ``(heads, head_dim)``).
        axes: logical names of the kernel dims: input dims then output dims.
    """

    features: Sequence[int]
    axes: Sequence[str | None]
    contract: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[x.ndim - self.contract:]
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(self.kernel_init, tuple(self.axes)),
            (*in_shape, *self.features), self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param(
                "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                     tuple(self.axes[self.contract:])),
                tuple(self.features), self.param_dtype)
        return matmul(x, kernel, self.contract, self.dtype, bias)


DEFAULT_INIT = nn.initializers.normal(0.02)


@dataclasses.dataclass(frozen=True)
class LinearSpec:
    """Which layer the attention and MLP projections are (``model.linear``), with its settings.

    ``dense`` is :class:`Dense`; ``sltrain`` and ``spdf`` are the sparse / low-rank layers of
    :mod:`tlm_jax.models.sparse` (built from a :class:`~tlm_jax.config.ModelConfig` by
    :func:`tlm_jax.models.sparse.linear_spec`).
    """

    kind: str = "dense"
    rank: int = 32
    alpha: float = 8.0
    density: float = 0.03
    sparsity: float = 0.75
