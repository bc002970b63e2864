"""Grain input pipeline: token cache -> examples -> shuffled epochs -> per-process batches.

The global batch ``k`` is the shuffled examples ``[k*B, (k+1)*B)``; process ``p``
of ``P`` loads only rows ``[p*B/P, (p+1)*B/P)`` of it, so a multi-process run
sees exactly the batches of a single-process run. Each batch also carries
``index`` (each row's place in the global batch) for per-example randomness.
The iterator's state is a small dict saved in every checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grain
import jax
import numpy as np

from tlm_jax.data.cache import TokenArrays
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.errors import TLMError


class ExampleSource(grain.sources.RandomAccessDataSource):
    """Fixed-length examples ``[CLS] tokens [SEP] [PAD]...`` from a :class:`TokenArrays`.

    ``truncate``: one example per document, its first ``max_len - 2`` tokens (the
    papers' "each article truncated to 128 tokens"). ``pack``: documents joined
    with [SEP] into one stream, cut into windows of ``max_len - 2`` tokens.
    """

    def __init__(self, arrays: TokenArrays, special: SpecialTokens, max_len: int,
                 packing: str = "truncate") -> None:
        if max_len < 3:
            raise TLMError(f"max_len={max_len} is too small", "use at least 8")
        self.arrays, self.special, self.max_len, self.packing = arrays, special, max_len, packing
        self.body = max_len - 2
        if packing == "pack":
            # Virtual stream: each document followed by one [SEP].
            self.vstarts = arrays.offsets + np.arange(len(arrays.offsets))
            self._len = int(math.ceil(self.vstarts[-1] / self.body)) if len(arrays) else 0
        else:
            self._len = len(arrays)

    def __len__(self) -> int:
        return self._len

    def _window(self, w: int) -> np.ndarray:
        start = w * self.body
        pos = np.arange(start, min(start + self.body, int(self.vstarts[-1])))
        doc = np.searchsorted(self.vstarts, pos, side="right") - 1
        local = pos - self.vstarts[doc]
        lengths = np.diff(self.arrays.offsets)[doc]
        is_sep = local >= lengths
        src = np.where(is_sep, 0, self.arrays.offsets[doc] + np.minimum(local, lengths - 1))
        toks = np.asarray(self.arrays.tokens[src], np.int32) if len(src) else np.zeros(0, np.int32)
        return np.where(is_sep, self.special.sep, toks)

    def __getitem__(self, i: int) -> np.ndarray:
        body = (self._window(int(i)) if self.packing == "pack"
                else np.asarray(self.arrays.doc(int(i))[: self.body], np.int32))
        out = np.full(self.max_len, self.special.pad, np.int32)
        out[0] = self.special.cls
        out[1:1 + len(body)] = body
        out[1 + len(body)] = self.special.sep
        return out

    def __repr__(self) -> str:
        return f"ExampleSource(n={self._len}, max_len={self.max_len}, packing={self.packing})"


@dataclass(frozen=True)
class ShardInfo:
    """Which slice of each global batch this process loads."""

    index: int = 0
    count: int = 1


def local_shard() -> ShardInfo:
    """This process's place among ``jax.process_count()`` processes."""
    return ShardInfo(jax.process_index(), jax.process_count())


def make_dataset(source: ExampleSource | grain.MapDataset, global_batch: int, *, seed: int,
                 shuffle: bool = True, repeat: bool = True, shard: ShardInfo | None = None,
                 transform: Callable[[grain.MapDataset], grain.MapDataset] | None = None
                 ) -> grain.MapDataset:
    """A ``MapDataset`` of this process's share of each global batch.

    Shuffling is reseeded every epoch; batches may cross epoch boundaries. ``source``
    may itself be a ``MapDataset`` (a mixture of sources). ``transform`` rewrites the
    global example stream (index = place in training order) before batching, e.g. the
    insertions of :mod:`tlm_jax.data.insertion`.
    """
    shard = shard or local_shard()
    if len(source) == 0:
        raise TLMError("the dataset has no examples", "check the data source and subset")
    if global_batch % shard.count:
        raise TLMError(f"global batch {global_batch} does not divide over {shard.count} processes",
                       "use a batch that is a multiple of the process count")
    local = global_batch // shard.count
    ds = source if isinstance(source, grain.MapDataset) else grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if repeat:
        ds = ds.repeat(None)
    if transform is not None:
        ds = transform(ds)
    ds = ds.batch(local, drop_remainder=True)
    ds = ds[shard.index::shard.count]
    offset = shard.index * local
    return ds.map(lambda ids: {"input_ids": ids,
                               "index": np.arange(offset, offset + local, dtype=np.int32)})


def make_iterator(ds: grain.MapDataset, *, prefetch: int = 2, workers: int = 0
                  ) -> grain.DatasetIterator:
    """A checkpointable iterator (``get_state``/``set_state``) with background prefetch."""
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(prefetch, 1),
                                                 prefetch_buffer_size=max(prefetch, 1)))
    if workers > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(it_ds)


def eval_batches(source: ExampleSource, global_batch: int, num_batches: int,
                 shard: ShardInfo | None = None) -> Iterator[dict[str, Any]]:
    """The first ``num_batches`` batches of the validation set, in order (repeats if small)."""
    if len(source) == 0:
        return iter(())
    ds = make_dataset(source, global_batch, seed=0, shuffle=False, repeat=True, shard=shard)
    n = min(num_batches, max(1, math.ceil(len(source) / global_batch)))
    return (ds[i] for i in range(n))


def epoch_of(step: int, global_batch: int, num_examples: int) -> float:
    """Fractional epoch after ``step`` steps."""
    return step * global_batch / max(num_examples, 1)
