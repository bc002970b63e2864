"""Continual-pretraining data: document pools, perplexity selection and epoch mixtures.

Guo et al. ("Efficient continual pretraining by mitigating the stability gap",
arXiv 2406.14833) fix the data side of continual pretraining in three ways,
each a choice here:

I.   several epochs over a modest subset of the new corpus: :func:`select_random`
     (or ``select_lowest``) with a token budget, trained for ``train.epochs``;
II.  the highest-quality subset: :class:`BigramLM` scores each new document by
     perplexity under a reference text (their KenLM), :func:`select_lowest` keeps
     the lowest-perplexity documents up to the budget;
III. each epoch built like the original pretraining mixture: :class:`EpochMixture`
     draws a fixed share of every epoch from the new pool and the rest from the
     old corpus (replay), resampled every epoch (``dynamic``) or once (``fixed``).

:class:`MixtureDataset` is a Grain ``MapDataset`` whose element ``i`` is a pure
function of ``i`` (epoch ``i // epoch_size``), so the ordinary pipeline shuffles,
batches and checkpoints it, and a resumed run sees the very same examples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import grain
import numpy as np

from tlm_jax.data.cache import TokenArrays
from tlm_jax.errors import TLMError


def subset_arrays(arrays: TokenArrays, ids: Sequence[int] | np.ndarray) -> TokenArrays:
    """An in-memory :class:`TokenArrays` of documents ``ids`` of ``arrays``, in that order."""
    return TokenArrays.from_docs((np.asarray(arrays.doc(int(i))) for i in ids),
                                 dtype=arrays.tokens.dtype)


def trained_lengths(arrays: TokenArrays, max_len: int, packing: str) -> np.ndarray:
    """Tokens each document contributes to training: its first ``max_len - 2`` when truncated.

    In ``pack`` mode every token is trained (plus one [SEP] per document, not counted).
    """
    lengths = np.diff(arrays.offsets)
    return np.minimum(lengths, max_len - 2) if packing == "truncate" else lengths


# ----------------------------------------------------------------------------
# Quality scoring (strategy II)
# ----------------------------------------------------------------------------


class BigramLM:
    """Interpolated token-bigram language model: the offline stand-in for the paper's KenLM.

    ``p(w | v) = lam * c(v, w) / c(v) + (1 - lam) * p1(w)`` with the add-``alpha``
    unigram ``p1(w) = (c(w) + alpha) / (N + alpha * V)``; a ``v`` never seen as a
    history falls back to ``p1``. Documents are scored by per-token perplexity.
    """

    def __init__(self, unigram: np.ndarray, pair_keys: np.ndarray, pair_counts: np.ndarray,
                 history_counts: np.ndarray, vocab_size: int, lam: float) -> None:
        self.unigram, self.pair_keys, self.pair_counts = unigram, pair_keys, pair_counts
        self.history_counts, self.vocab_size, self.lam = history_counts, vocab_size, lam

    @classmethod
    def fit(cls, docs: Iterable[np.ndarray], vocab_size: int, *, lam: float = 0.7,
            alpha: float = 0.1) -> BigramLM:
        """Count unigrams and within-document bigrams of ``docs`` (token-id arrays)."""
        uni = np.zeros(vocab_size, np.float64)
        keys: list[np.ndarray] = []
        for d in docs:
            d = np.asarray(d, np.int64)
            if len(d) == 0:
                continue
            uni += np.bincount(d, minlength=vocab_size)[:vocab_size]
            if len(d) > 1:
                keys.append(d[:-1] * vocab_size + d[1:])
        if uni.sum() == 0:
            raise TLMError("the perplexity reference text is empty",
                           "use continual.reference=train or a corpus with a validation split")
        p1 = (uni + alpha) / (uni.sum() + alpha * vocab_size)
        all_keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        pair_keys, pair_counts = np.unique(all_keys, return_counts=True)
        hist = np.bincount(all_keys // vocab_size, minlength=vocab_size).astype(np.float64)
        return cls(p1, pair_keys, pair_counts.astype(np.float64), hist, vocab_size, lam)

    def token_logprobs(self, doc: np.ndarray) -> np.ndarray:
        """``log p`` of every token of ``doc`` (the first under the unigram)."""
        d = np.asarray(doc, np.int64)
        if len(d) == 0:
            return np.zeros(0)
        out = np.log(self.unigram[d])
        if len(d) > 1:
            prev, cur = d[:-1], d[1:]
            key = prev * self.vocab_size + cur
            pos = np.clip(np.searchsorted(self.pair_keys, key), 0, max(len(self.pair_keys) - 1, 0))
            found = (self.pair_keys[pos] == key) if len(self.pair_keys) else np.zeros(len(key), bool)
            pair = np.where(found, self.pair_counts[pos] if len(self.pair_keys) else 0.0, 0.0)
            hist = self.history_counts[prev]
            cond = np.where(hist > 0, pair / np.maximum(hist, 1.0), 0.0)
            lam = np.where(hist > 0, self.lam, 0.0)
            out[1:] = np.log(lam * cond + (1.0 - lam) * self.unigram[cur])
        return out

    def perplexity(self, doc: np.ndarray) -> float:
        """``exp(mean negative log-likelihood)`` of ``doc`` (inf for an empty one)."""
        lp = self.token_logprobs(doc)
        return float(np.exp(-lp.mean())) if len(lp) else float("inf")


def document_perplexities(lm: BigramLM, arrays: TokenArrays, max_tokens: int = 0) -> np.ndarray:
    """Perplexity of each document of ``arrays`` (of its first ``max_tokens`` if > 0)."""
    out = np.empty(len(arrays))
    for i in range(len(arrays)):
        d = np.asarray(arrays.doc(i))
        out[i] = lm.perplexity(d[:max_tokens] if max_tokens else d)
    return out


def _content_keys(arrays: TokenArrays | None, n: int) -> np.ndarray:
    """A tie-breaker that depends on a document's tokens only, not on its position."""
    if arrays is None:
        return np.arange(n)
    keys = [int.from_bytes(hashlib.blake2b(np.asarray(arrays.doc(i), np.int64).tobytes(),
                                           digest_size=8).digest(), "little") for i in range(n)]
    return np.asarray(keys, np.uint64)


def select_lowest(scores: np.ndarray, costs: np.ndarray, budget: int, *, min_cost: int = 0,
                  arrays: TokenArrays | None = None) -> np.ndarray:
    """Indices of the lowest-``scores`` items whose ``costs`` fit in ``budget`` (0 = all).

    Items are taken in ascending score order (ties broken by content when ``arrays`` is
    given, so the chosen *set* does not depend on the input order) and the first item
    that would overflow the budget ends the selection: the result is exactly the
    lowest-perplexity prefix. Items cheaper than ``min_cost`` are never taken.
    Returned in ascending score order.
    """
    scores, costs = np.asarray(scores, np.float64), np.asarray(costs, np.int64)
    if len(scores) != len(costs):
        raise ValueError("scores and costs differ in length")
    order = np.lexsort((_content_keys(arrays, len(scores)), scores))
    order = order[costs[order] >= max(min_cost, 1)]
    if budget <= 0:
        return order
    cum = np.cumsum(costs[order])
    return order[: int(np.searchsorted(cum, budget, side="right"))]


def select_random(costs: np.ndarray, budget: int, *, seed: int, min_cost: int = 0) -> np.ndarray:
    """A seeded random subset (in sampled order) whose ``costs`` fit in ``budget`` (0 = all)."""
    costs = np.asarray(costs, np.int64)
    keys = np.random.default_rng(seed).random(len(costs))
    return select_lowest(keys, costs, budget, min_cost=min_cost)


# ----------------------------------------------------------------------------
# Epoch mixtures (replay, strategy III)
# ----------------------------------------------------------------------------


def share_counts(shares: Sequence[float], total: int) -> np.ndarray:
    """Integer counts summing to ``total`` closest to ``shares * total`` (largest remainder)."""
    s = np.asarray(shares, np.float64)
    if (s < 0).any() or s.sum() <= 0:
        raise TLMError(f"mixture shares {list(shares)} are not a distribution",
                       "use non-negative shares with a positive sum")
    exact = s / s.sum() * total
    counts = np.floor(exact).astype(np.int64)
    rest = total - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:rest]] += 1
    return counts


def _draw(pool: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices of ``range(pool)``: without replacement, whole permutations if ``n > pool``."""
    reps, rest = divmod(n, pool)
    parts = [rng.permutation(pool) for _ in range(reps)]
    if rest:
        parts.append(rng.permutation(pool)[:rest])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class EpochMixture(grain.transforms.DatasetSelectionMap):
    """Global index -> ``(pool, index in pool)``: epochs of ``epoch_size`` with fixed shares.

    Epoch ``e`` holds exactly ``share_counts(shares, epoch_size)[p]`` examples of pool
    ``p``, drawn without replacement (whole permutations when a pool is smaller than
    its count) and shuffled together. ``resample=True`` ("rate-fixed-data-dynamic")
    draws each pool's examples afresh every epoch; ``False`` ("data-fixed") draws them
    once and only reshuffles their order. A pure function of the index and the seed:
    picklable, and a restored iterator position reproduces the stream.
    """

    def __init__(self, pool_sizes: Sequence[int], shares: Sequence[float], epoch_size: int, *,
                 seed: int, resample: bool = True) -> None:
        if len(pool_sizes) != len(shares):
            raise ValueError("one share per pool")
        if epoch_size <= 0:
            raise TLMError(f"mixture epoch size {epoch_size} is not positive",
                           "set continual.epoch_examples > 0 or give the pool documents")
        self.pool_sizes = [int(p) for p in pool_sizes]
        self.counts = share_counts(shares, epoch_size)
        for p, c in zip(self.pool_sizes, self.counts, strict=True):
            if c and p <= 0:
                raise TLMError("a mixture pool with a positive share is empty",
                               "check the corpus of that pool (new corpus or replayed run)")
        self.epoch_size, self.seed, self.resample = int(epoch_size), int(seed), resample
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.epoch_size

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """``(pool ids, indices in pool)`` of every example of epoch ``e``, in stream order."""
        if self._cache is not None and self._cache[0] == e:
            return self._cache[1], self._cache[2]
        pools, idx = [], []
        for p, (size, n) in enumerate(zip(self.pool_sizes, self.counts, strict=True)):
            if not n:
                continue
            draw_seed = (self.seed, p, e) if self.resample else (self.seed, p)
            idx.append(_draw(size, int(n), np.random.default_rng(draw_seed)))
            pools.append(np.full(int(n), p, np.int64))
        order = np.random.default_rng((self.seed, 1_000_003, e)).permutation(self.epoch_size)
        src, loc = np.concatenate(pools)[order], np.concatenate(idx)[order]
        self._cache = (e, src, loc)
        return src, loc

    def __getitem__(self, index: int) -> tuple[int, int]:
        e, pos = divmod(int(index), self.epoch_size)
        src, loc = self.epoch(e)
        return int(src[pos]), int(loc[pos])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}


class MixtureDataset(grain.MapDataset):
    """A Grain ``MapDataset`` over several example sources, routed by an :class:`EpochMixture`.

    ``len`` is one epoch; indices past it address later epochs (as Grain's ``repeat``
    passes them on), each with its own draw.
    """

    def __init__(self, sources: Sequence[Any], selection: EpochMixture) -> None:
        parents = [s if isinstance(s, grain.MapDataset) else grain.MapDataset.source(s)
                   for s in sources]
        super().__init__(parents)
        self.sources, self.selection = list(sources), selection

    def __len__(self) -> int:
        return len(self.selection)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.slice(index)
        src, loc = self.selection[index]
        return self._parents[src][loc]

    def __str__(self) -> str:
        return f"MixtureDataset(pools={self.selection.pool_sizes}, counts={self.selection.counts})"


__all__ = ["BigramLM", "EpochMixture", "MixtureDataset", "document_perplexities",
           "select_lowest", "select_random", "share_counts", "subset_arrays", "trained_lengths"]
