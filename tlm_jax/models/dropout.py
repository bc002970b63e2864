"""Dropout whose masks cost a quarter of the random bits.

``flax.linen.Dropout`` draws one uniform float (one Threefry-2x32 evaluation under
the partitionable Threefry of current JAX) per element; on a CPU those masks were
~14 % of a BERT train step (``benchmarks/dropout_rng.py``). One Threefry-2x32
evaluation yields 64 random bits, and a 16-bit uniform is plenty for a keep/drop
decision, so here each evaluation decides four elements. The realised drop
probability is ``round(rate * 65536) / 65536`` (0.1 -> 0.100006) and the kept
values are scaled by the inverse of the realised keep probability, so the layer
stays unbiased.

The counters are laid out over the array's own leading dimensions (only the last
dimension is grouped in fours), so under ``jax.jit`` with sharded activations each
device computes just its own part of the mask, and the mask for an element does not
depend on how the array is sharded.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_LANES = 4  # 16-bit uniforms per Threefry-2x32 evaluation (2 x 32 bits)
_ONE = 1 << 16


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k1: jax.Array, k2: jax.Array, x0: jax.Array, x1: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 (20 rounds) of the counters ``(x0, x1)`` under the key ``(k1, k2)``.

    Bit-identical to JAX's ``threefry2x32_p``, written out as uint32 arithmetic. JAX lowers
    its primitive on CPU as a rolled 5-iteration while loop (to save compile time), and XLA
    copies both counter arrays on every iteration: ~2 ms per attention mask of a bert-6-cpu
    microbatch, 2-9 % of the step in in-process A/B runs. Unrolled, the rounds run in one
    fused kernel.
    """
    def rotl(v: jax.Array, d: int) -> jax.Array:
        return (v << np.uint32(d)) | (v >> np.uint32(32 - d))

    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ rotl(x1, r)
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def drop_threshold(rate: float) -> int:
    """Drop an element when its 16-bit uniform is below this (``rate * 2**16``, rounded)."""
    return int(round(rate * _ONE))


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """Boolean keep mask of ``shape``: each element is dropped with probability ~``rate``.

    ``key``: a typed PRNG key or a raw ``uint32[2]`` Threefry key.
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    key = key.reshape(-1)
    k1, k2 = key[0].astype(jnp.uint32), key[1].astype(jnp.uint32)
    shape_ = tuple(shape) or (1,)
    last = shape_[-1]
    groups = -(-last // _LANES)
    grid = (*shape_[:-1], groups)
    rows = int(np.prod(shape_[:-1], dtype=np.int64))
    if rows >= 1 << 32 or groups >= 1 << 32:
        raise ValueError(f"dropout over shape {shape} needs more than 2**32 counters per word")
    # Counter pair (row, group): the row-major index over the leading dims, and the group of
    # four along the last dim. Distinct for every element group and independent of sharding.
    row = jnp.zeros(grid, jnp.uint32)
    stride = 1
    for axis in range(len(grid) - 2, -1, -1):
        row = row + jax.lax.broadcasted_iota(jnp.uint32, grid, axis) * jnp.uint32(stride)
        stride *= grid[axis]
    group = jax.lax.broadcasted_iota(jnp.uint32, grid, len(grid) - 1)
    # The barrier materialises the two words once; fused into the four-lane stack below, XLA
    # would recompute the 20 rounds for every lane.
    b1, b2 = jax.lax.optimization_barrier(threefry2x32(k1, k2, row, group))
    words = jnp.stack([b1 & 0xFFFF, b1 >> 16, b2 & 0xFFFF, b2 >> 16], axis=-1)
    bits = words.reshape(*shape_[:-1], groups * _LANES)[..., :last]
    keep = bits >= jnp.uint32(drop_threshold(rate))
    return keep.reshape(shape)


def keep_probability(rate: float) -> float:
    """The realised keep probability of :func:`keep_mask` at ``rate``."""
    return 1.0 - drop_threshold(rate) / _ONE


def dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout of ``x`` with :func:`keep_mask` (no-op for ``rate == 0``)."""
    if rate <= 0.0:
        return x
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep_prob = keep_probability(rate)
    mask = keep_mask(key, x.shape, rate)
    return jnp.where(mask, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` (same ``rate``/``deterministic``/``dropout`` rng stream)."""

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if deterministic or self.rate <= 0.0:
            return x
        return dropout(x, self.rate, self.make_rng(self.rng_collection))
