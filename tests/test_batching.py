"""Row-chunked inference (tlm_jax/models/batching.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlm_jax.models.batching import default_chunk_rows, map_in_chunks


def _fn(x: jax.Array, m: jax.Array) -> dict[str, jax.Array]:
    """Row-independent, two outputs of different shapes."""
    return {"sum": (x * m).sum(-1), "scaled": x * 2.0}


@pytest.mark.parametrize("rows", [0, 1, 3, 4, 10, 11])
def test_chunks_equal_one_call_with_a_padded_remainder(rows: int) -> None:
    x = jnp.asarray(np.random.default_rng(0).normal(size=(10, 5)), jnp.float32)
    m = jnp.asarray(np.random.default_rng(1).integers(0, 2, (10, 5)), jnp.float32)
    want = _fn(x, m)
    got = jax.jit(map_in_chunks(_fn, rows))(x, m)
    for k in want:
        assert got[k].shape == want[k].shape
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-6)


@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_sharded_chunks_take_rows_from_every_shard(rows: int) -> None:
    x = jnp.arange(20.0).reshape(10, 2)
    seen = []

    def fn(a: jax.Array) -> jax.Array:
        seen.append(a.shape)
        return a * 3.0

    got = map_in_chunks(fn, rows, shards=2)(x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(x) * 3.0)
    assert seen == ([(2 * rows, 2)] if rows < 5 else [(10, 2)])
    with pytest.raises(ValueError, match="not divisible by shards"):
        map_in_chunks(fn, rows, shards=3)(x)


def test_chunks_run_as_a_loop_of_the_chunk_shape() -> None:
    x = jnp.ones((12, 5))
    jaxpr = str(jax.make_jaxpr(map_in_chunks(lambda a: a.sum(-1), 4))(x))
    assert "while" in jaxpr or "scan" in jaxpr
    assert "f32[4,5]" in jaxpr


def test_mismatched_leading_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="same leading size"):
        map_in_chunks(_fn, 2)(jnp.ones((4, 3)), jnp.ones((5, 3)))


def test_default_chunk_rows_only_on_a_cpu() -> None:
    assert default_chunk_rows(128, "cpu") == 8
    assert default_chunk_rows(4096, "cpu") == 1
    assert default_chunk_rows(128, "gpu") == 0
    assert default_chunk_rows(128, "tpu") == 0
