"""Corpus subsets the way papers size them: all, the first N, or N random documents.

Selection is by document *index* in the stream a source yields, so it works in
one streaming pass without holding any text: only int arrays of indices (and,
for ``"random"``, a bounded buffer of N hash keys) are kept.

``"random"`` gives every document a seeded 64-bit key (a bijective SplitMix64
hash of its index, so keys never tie) and keeps the N smallest. That is exactly
"the first N documents of a seeded shuffle": a larger N with the same seed
selects a superset, and the result does not depend on how the stream is
chunked. The validation split uses a second, independently salted key over the
selected indices, so it is deterministic by seed too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from tlm_jax.errors import TLMError

MODES = ("all", "first", "random")

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_SALT_SELECT = 0x5E1EC7
_SALT_VAL = 0x7A11DA7E
# Indices are hashed in chunks: numpy per chunk is ~100x cheaper than Python per document.
_CHUNK = 1 << 16


@dataclass(frozen=True, eq=False)
class SubsetPlan:
    """Which documents of a stream to use.

    Attributes:
        train_ids: sorted int64 indices (into the source's document stream) for training.
        val_ids: sorted int64 indices for validation, disjoint from ``train_ids``.
        total_docs: number of documents in the whole stream.
    """

    train_ids: np.ndarray
    val_ids: np.ndarray
    total_docs: int

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SubsetPlan):
            return NotImplemented
        return (self.total_docs == other.total_docs
                and np.array_equal(self.train_ids, other.train_ids)
                and np.array_equal(self.val_ids, other.val_ids))

    @property
    def num_train(self) -> int:
        """Number of training documents."""
        return int(self.train_ids.size)

    @property
    def num_val(self) -> int:
        """Number of validation documents."""
        return int(self.val_ids.size)


def _mix_scalar(x: int) -> int:
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _MIX1) & _MASK64
    x = ((x ^ (x >> 27)) * _MIX2) & _MASK64
    return x ^ (x >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    # uint64 array arithmetic wraps modulo 2**64, which is what SplitMix64 wants.
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_MIX1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_MIX2)
    return x ^ (x >> np.uint64(31))


def _keys(indices: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Seeded 64-bit keys of document indices; a bijection of the index for a fixed seed."""
    base = np.uint64(_mix_scalar((seed & _MASK64) ^ _mix_scalar(salt)))
    x = np.asarray(indices, dtype=np.int64).astype(np.uint64) * np.uint64(_GOLDEN) + base
    return _mix(x)


def _smallest(keys: np.ndarray, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    if keys.size <= n:
        return keys, ids
    keep = np.argpartition(keys, n - 1)[:n]
    return keys[keep], ids[keep]


def _random_pass(doc_factory: Callable[[], Iterable[str]], n: int,
                 seed: int) -> tuple[np.ndarray, int]:
    """One pass: the ``n`` indices with the smallest keys, and the stream length."""
    best_keys = np.empty(0, dtype=np.uint64)
    best_ids = np.empty(0, dtype=np.int64)
    total = 0
    for _ in doc_factory():
        total += 1
        if total % _CHUNK == 0:
            ids = np.arange(total - _CHUNK, total, dtype=np.int64)
            best_keys, best_ids = _smallest(
                np.concatenate([best_keys, _keys(ids, seed, _SALT_SELECT)]),
                np.concatenate([best_ids, ids]), n)
    rest = total % _CHUNK
    if rest:
        ids = np.arange(total - rest, total, dtype=np.int64)
        best_keys, best_ids = _smallest(
            np.concatenate([best_keys, _keys(ids, seed, _SALT_SELECT)]),
            np.concatenate([best_ids, ids]), n)
    return np.sort(best_ids), total


def _count(doc_factory: Callable[[], Iterable[str]]) -> int:
    return sum(1 for _ in doc_factory())


def plan_subset(
    doc_factory: Callable[[], Iterable[str]],
    *,
    mode: str = "all",
    num_docs: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.0,
    val_docs: int | None = None,
) -> SubsetPlan:
    """Choose the training and validation documents of a stream, deterministically.

    Args:
        doc_factory: returns a *fresh* iterator over the documents each call.
        mode: ``"all"`` (every document), ``"first"`` (the first ``num_docs``) or
            ``"random"`` (``num_docs`` documents, uniformly at random by ``seed``:
            the first ``num_docs`` of a seeded shuffle).
        num_docs: subset size; required for ``"first"`` and ``"random"``.
        seed: selects the random subset and the validation split.
        val_fraction: fraction of the selected documents held out for validation,
            rounded half up; must be in [0, 1).
        val_docs: exact number of validation documents (instead of ``val_fraction``).

    Returns:
        A :class:`SubsetPlan`. The stream is read once, fully (``total_docs`` is
        always the true stream length, also for ``"first"``).

    Raises:
        TLMError: unknown mode, ``num_docs`` missing or larger than the corpus,
            a bad validation size, or an empty training subset.
    """
    if mode not in MODES:
        raise TLMError(f"unknown subset mode {mode!r}", f"use one of: {', '.join(MODES)}")
    if mode == "all":
        if num_docs is not None:
            raise TLMError(f"num_docs={num_docs} is set but subset mode is 'all'",
                           "use mode 'first' or 'random' to take a subset, or drop num_docs")
    elif num_docs is None:
        raise TLMError(f"subset mode {mode!r} needs num_docs", "set num_docs to the subset size")
    elif num_docs <= 0:
        raise TLMError(f"num_docs={num_docs} must be positive", "set num_docs >= 1")
    if not 0.0 <= val_fraction < 1.0:
        raise TLMError(f"val_fraction={val_fraction} is outside [0, 1)",
                       "use e.g. 0.01 for 1% validation documents, or 0 for none")
    if val_docs is not None:
        if val_docs < 0:
            raise TLMError(f"val_docs={val_docs} is negative", "set val_docs >= 0")
        if val_fraction:
            raise TLMError(f"both val_docs={val_docs} and val_fraction={val_fraction} are set",
                           "set only one of them")

    if mode == "random":
        assert num_docs is not None
        selected, total = _random_pass(doc_factory, num_docs, seed)
    else:
        total = _count(doc_factory)
        size = total if mode == "all" else min(num_docs or 0, total)
        selected = np.arange(size, dtype=np.int64)
    if total == 0:
        raise TLMError("the document source yielded no documents",
                       "check the source's paths, kind, domains and min_chars")
    if num_docs is not None and num_docs > total:
        raise TLMError(f"num_docs={num_docs} but the corpus has only {total} documents",
                       f"set num_docs <= {total}, or use mode 'all'")

    n = int(selected.size)
    if val_docs is not None:
        k = val_docs
    else:
        k = int(np.floor(val_fraction * n + 0.5))
        if val_fraction > 0 and k == 0:
            raise TLMError(f"val_fraction={val_fraction} of {n} documents rounds to "
                           "0 validation documents", "raise val_fraction, or set val_docs")
    if k >= n:
        raise TLMError(f"{k} validation documents out of {n} selected leaves the training "
                       "subset empty", "lower val_docs/val_fraction, or select more documents")
    if k:
        pick = np.argpartition(_keys(selected, seed, _SALT_VAL), k - 1)[:k]
        is_val = np.zeros(n, dtype=bool)
        is_val[pick] = True
        val_ids, train_ids = selected[is_val], selected[~is_val]
    else:
        val_ids, train_ids = np.empty(0, dtype=np.int64), selected
    return SubsetPlan(train_ids=train_ids.astype(np.int64), val_ids=val_ids.astype(np.int64),
                      total_docs=total)


def iter_selected(doc_factory: Callable[[], Iterable[str]], ids: np.ndarray) -> Iterator[str]:
    """Yield the documents at ``ids`` in stream order, in one pass (stops after the last).

    Duplicate ids are yielded once.

    Raises:
        TLMError: (while iterating) if the stream ends before the largest id,
            i.e. the source changed since the plan was made.
    """
    wanted = np.unique(np.asarray(ids, dtype=np.int64))
    if wanted.size and wanted[0] < 0:
        raise TLMError(f"document index {int(wanted[0])} is negative",
                       "pass indices from a SubsetPlan")
    return _iter_selected(doc_factory, wanted.tolist())


def _iter_selected(doc_factory: Callable[[], Iterable[str]], wanted: list[int]) -> Iterator[str]:
    if not wanted:
        return
    j, seen = 0, 0
    for i, doc in enumerate(doc_factory()):
        seen = i + 1
        if i == wanted[j]:
            yield doc
            j += 1
            if j == len(wanted):
                return
    raise TLMError(f"the document stream ended after {seen} documents, before index "
                   f"{wanted[j]} of the subset plan",
                   "the source changed since the plan was made: re-plan the subset "
                   "(and make doc_factory return a fresh iterator each call)")


def take_words(docs: Iterable[str], max_words: int) -> Iterator[str]:
    """Yield documents until their cumulative whitespace word count reaches ``max_words``.

    The document that reaches the budget is included; no further document is
    pulled from ``docs`` after that.

    Raises:
        TLMError: if ``max_words`` is negative.
    """
    if max_words < 0:
        raise TLMError(f"max_words={max_words} is negative", "set max_words >= 0")
    return _take_words(docs, max_words)


def _take_words(docs: Iterable[str], max_words: int) -> Iterator[str]:
    if max_words == 0:
        return
    words = 0
    for doc in docs:
        yield doc
        words += len(doc.split())
        if words >= max_words:
            return
