"""The 16-bit dropout masks: rate, independence, determinism, sharding invariance."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tlm_jax.models.dropout import Dropout, drop_threshold, dropout, keep_mask, threefry2x32


def test_drop_rate_and_scaling_are_unbiased() -> None:
    key = jax.random.key(0)
    x = jnp.ones((64, 4, 128, 128), jnp.float32)
    y = np.asarray(dropout(x, 0.1, key))
    dropped = (y == 0).mean()
    n = y.size
    # Binomial standard deviation at n = 4.2 M: 1.5e-4; allow 5 sigma.
    assert abs(dropped - drop_threshold(0.1) / 65536) < 5 * np.sqrt(0.09 / n)
    assert abs(y.mean() - 1.0) < 1e-3  # inverted dropout keeps the expectation
    assert np.allclose(np.unique(y), [0.0, 1.0 / (1 - drop_threshold(0.1) / 65536)])


def test_masks_vary_with_key_and_are_deterministic() -> None:
    a = np.asarray(keep_mask(jax.random.key(1), (16, 130), 0.5))
    b = np.asarray(keep_mask(jax.random.key(1), (16, 130), 0.5))
    c = np.asarray(keep_mask(jax.random.key(2), (16, 130), 0.5))
    raw = np.asarray(keep_mask(jax.random.key_data(jax.random.key(1)), (16, 130), 0.5))
    assert (a == b).all() and (a == raw).all()
    assert 0.4 < (a != c).mean() < 0.6  # independent keys disagree half the time at rate 0.5


def test_lanes_and_neighbours_are_uncorrelated() -> None:
    """The four 16-bit lanes of one Threefry output, and neighbouring rows, look independent."""
    m = np.asarray(keep_mask(jax.random.key(3), (4096, 64), 0.5)).astype(np.float64)
    flat = m.reshape(-1)
    for lag in (1, 2, 3, 4, 64):  # within a group, across groups, the next row
        r = np.corrcoef(flat[:-lag], flat[lag:])[0, 1]
        assert abs(r) < 0.01, (lag, r)
    # Odd last dims are covered exactly (no dropped or repeated tail).
    odd = np.asarray(keep_mask(jax.random.key(3), (7, 5), 0.5))
    assert odd.shape == (7, 5)


def test_mask_does_not_depend_on_sharding() -> None:
    mesh = jax.make_mesh((4, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    key = jax.random.key(4)
    shape = (8, 6, 32)
    want = np.asarray(keep_mask(key, shape, 0.3))
    f = jax.jit(lambda k: keep_mask(k, shape, 0.3),
                out_shardings=NamedSharding(mesh, P("a", "b", None)))
    got = f(key)
    assert len(got.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(got), want)


def test_module_is_identity_when_deterministic_and_uses_dropout_rng() -> None:
    mod = Dropout(0.2)
    x = jnp.arange(40.0).reshape(4, 10) + 1
    assert (mod.apply({}, x, deterministic=True) == x).all()
    y1 = mod.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    y2 = mod.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert (np.asarray(y1) == 0).any() and not np.array_equal(np.asarray(y1), np.asarray(y2))
    assert (Dropout(0.0).apply({}, x, deterministic=False) == x).all()


def test_unrolled_threefry_is_bit_identical_to_jax() -> None:
    rng = np.random.default_rng(0)
    k1, k2 = (jnp.uint32(v) for v in rng.integers(0, 2**32, 2, dtype=np.uint64))
    x0, x1 = (jnp.asarray(rng.integers(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32))
              for _ in range(2))
    ours = jax.jit(threefry2x32)(k1, k2, x0, x1)
    ref = threefry2x32_p.bind(k1, k2, x0, x1)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
