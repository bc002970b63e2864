"""Grain pipeline: example layout, determinism, process sharding, iterator state."""

from __future__ import annotations

import numpy as np
import pytest

from tlm_jax.data.cache import TokenArrays
from tlm_jax.data.pipeline import ExampleSource, ShardInfo, make_dataset, make_iterator
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.errors import TLMError

SP = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=100)


def _arrays(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return TokenArrays.from_docs([rng.integers(5, 100, rng.integers(1, 30)) for _ in range(n)])


def test_truncate_wraps_each_document() -> None:
    arr = _arrays()
    src = ExampleSource(arr, SP, max_len=12)
    assert len(src) == len(arr)
    for i in range(len(arr)):
        ex, doc = src[i], arr.doc(i)
        body = doc[:10]
        assert ex[0] == SP.cls and ex[1 + len(body)] == SP.sep
        np.testing.assert_array_equal(ex[1:1 + len(body)], body)
        assert np.all(ex[2 + len(body):] == SP.pad)


def test_pack_streams_documents_with_separators() -> None:
    arr = _arrays()
    src = ExampleSource(arr, SP, max_len=16, packing="pack")
    stream = np.concatenate([np.append(arr.doc(i), SP.sep) for i in range(len(arr))])
    got = np.concatenate([src[i][1:-1] if i < len(src) - 1 else src[i][1:] for i in range(len(src))])
    got = got[got != SP.pad]
    # every window is [CLS] body(14) [SEP]; the body windows concatenate to the stream
    bodies = [src[i][1:15] for i in range(len(src) - 1)]
    np.testing.assert_array_equal(np.concatenate(bodies), stream[: 14 * (len(src) - 1)])
    assert len(src) == int(np.ceil(len(stream) / 14))
    assert got.size > 0


def test_shuffle_is_deterministic_and_reshuffles_each_epoch() -> None:
    src = ExampleSource(_arrays(n=40), SP, max_len=8)
    ds = make_dataset(src, 8, seed=3, shard=ShardInfo())
    ds2 = make_dataset(src, 8, seed=3, shard=ShardInfo())
    for i in range(10):
        np.testing.assert_array_equal(ds[i]["input_ids"], ds2[i]["input_ids"])
    rows = lambda a, b: [tuple(r) for i in range(a, b) for r in ds[i]["input_ids"]]  # noqa: E731
    epoch1, epoch2 = rows(0, 5), rows(5, 10)
    all_rows = sorted(tuple(src[i]) for i in range(40))
    assert sorted(epoch1) == all_rows and sorted(epoch2) == all_rows  # each epoch a permutation
    assert epoch1 != epoch2
    other = make_dataset(src, 8, seed=4, shard=ShardInfo())
    assert [tuple(r) for r in other[0]["input_ids"]] != epoch1[:8]


def test_process_shards_reassemble_the_global_batch() -> None:
    src = ExampleSource(_arrays(n=64), SP, max_len=8)
    full = make_dataset(src, 16, seed=0, shard=ShardInfo(0, 1))
    parts = [make_dataset(src, 16, seed=0, shard=ShardInfo(p, 4)) for p in range(4)]
    for step in range(6):
        glued = np.concatenate([p[step]["input_ids"] for p in parts])
        np.testing.assert_array_equal(glued, full[step]["input_ids"])
        idx = np.concatenate([p[step]["index"] for p in parts])
        np.testing.assert_array_equal(idx, np.arange(16))


def test_iterator_state_restores_exactly() -> None:
    src = ExampleSource(_arrays(n=30), SP, max_len=8)
    ds = make_dataset(src, 4, seed=1, shard=ShardInfo())
    it = make_iterator(ds)
    for _ in range(11):  # crosses an epoch boundary (30 / 4)
        next(it)
    state = it.get_state()
    expected = [next(it)["input_ids"] for _ in range(5)]
    it2 = make_iterator(ds)
    it2.set_state(state)
    for e in expected:
        np.testing.assert_array_equal(next(it2)["input_ids"], e)


def test_batch_must_divide_over_processes() -> None:
    src = ExampleSource(_arrays(n=30), SP, max_len=8)
    with pytest.raises(TLMError, match="does not divide"):
        make_dataset(src, 6, seed=0, shard=ShardInfo(0, 4))
