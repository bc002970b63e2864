"""Run a forward pass over a large batch in row chunks, for CPU inference.

A CPU moves activations between cores and DRAM far slower than within its last-level
cache (this project's 2-core VM: ~5 GB/s to DRAM vs ~33 GB/s inside its 32 MB L3). A BERT
forward on 256 x 128 tokens writes [32768, 1024] float32 MLP activations (134 MB) per
layer; in chunks of ~1024 tokens everything a layer touches stays in the cache.
``benchmarks/inference.py``: bert-6-cpu at batch 256, 4155 -> 2067 ms; bert-1-cpu
149 -> 94 ms (AMD EPYC, 2 cores). Accelerators gain nothing from it, so
:func:`default_chunk_rows` chunks on a CPU only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

CPU_CHUNK_TOKENS = 1024  # best of 512..4096 for bert-1/-6 and a 512-wide BERT-1 (see above)


def default_chunk_rows(length: int, backend: str | None = None) -> int:
    """Rows per chunk for sequences of ``length`` tokens: ``0`` (no chunking) off a CPU."""
    if (backend or jax.default_backend()) != "cpu":
        return 0
    return max(1, CPU_CHUNK_TOKENS // max(length, 1))


def map_in_chunks(fn: Callable[..., Any], rows: int, shards: int = 1) -> Callable[..., Any]:
    """``fn`` over the leading (batch) axis of its array arguments, ``rows`` at a time.

    Every positional argument is an array (or a pytree of arrays) with the same leading
    size ``B``; ``fn`` must treat rows independently (an inference forward pass). The
    chunks run one after another under ``lax.map`` (one compiled body); a last partial
    chunk is padded with copies of a real row and its outputs dropped. ``rows <= 0``, or
    a chunk that would hold the whole batch, calls ``fn`` once.

    ``shards``: the batch is split over that many devices (``B`` divisible by it); each
    chunk then takes ``rows`` rows from every shard, so each device works through its own
    rows in chunks instead of the chunks cutting across devices. Traceable (use inside
    ``jax.jit``).
    """

    def chunked(*args: Any) -> Any:
        leaves = jax.tree.leaves(args)
        if not leaves:
            raise ValueError("map_in_chunks needs at least one array argument")
        b = leaves[0].shape[0]
        if any(x.shape[:1] != (b,) for x in leaves):
            raise ValueError("map_in_chunks: every argument needs the same leading size, got "
                             f"{sorted({x.shape[:1] for x in leaves})}")
        if b % shards:
            raise ValueError(f"map_in_chunks: batch {b} is not divisible by shards={shards}")
        per = b // shards
        if rows <= 0 or rows >= per:
            return fn(*args)
        n = -(-per // rows)
        pad = n * rows - per

        def split(x: jax.Array) -> jax.Array:
            x = x.reshape(shards, per, *x.shape[1:])
            if pad:
                x = jnp.concatenate([x, jnp.repeat(x[:, :1], pad, axis=1)], axis=1)
            x = x.reshape(shards, n, rows, *x.shape[2:]).swapaxes(0, 1)
            return x.reshape(n, shards * rows, *x.shape[3:])

        def join(y: jax.Array) -> jax.Array:
            y = y.reshape(n, shards, rows, *y.shape[2:]).swapaxes(0, 1)
            return y.reshape(shards, n * rows, *y.shape[3:])[:, :per].reshape(b, *y.shape[3:])

        out = jax.lax.map(lambda a: fn(*a), jax.tree.map(split, args))
        return jax.tree.map(join, out)

    return chunked
