"""Token overlap between a pretraining corpus and a classification set.

Everything is measured in the pretraining run's own WordPiece vocabulary, on
token ids, so the numbers describe what the model actually sees.

Definitions (``C`` = the pretraining run's training tokens, ``T`` = the task's
texts -- train, validation and test -- tokenized by the same tokenizer; special
tokens are excluded, [UNK] is kept and never counts as covered):

``token_coverage_k``
    Share of the token *occurrences* of ``T`` whose type occurs at least ``k``
    times in ``C``: how much of the task text the model saw often enough to
    learn during pretraining.
``word_coverage_k``
    The same for *words*: a word is a maximal run ``t ##t ##t``... of WordPiece
    tokens (the tokenizer's own word split, lower-cased), identified by its
    token-id tuple. A word that is [UNK] is never covered. Sub-word coverage is
    near 1 whenever the vocabulary was trained on ``C``; word coverage is the
    stricter, more informative number.
``token_jaccard`` / ``word_jaccard``
    Type-level Jaccard index ``|types(T) ∩ types(C)| / |types(T) ∪ types(C)|``.
    It is dominated by the larger set, so also:
``token_type_recall`` / ``word_type_recall``
    ``|types(T) ∩ types(C)| / |types(T)|``: the share of the task's types seen at
    least once in pretraining.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def continuation_mask(vocab: dict[str, int], size: int) -> np.ndarray:
    """``mask[id]`` is True for WordPiece continuation tokens (``##...``)."""
    mask = np.zeros(size, bool)
    for tok, i in vocab.items():
        if tok.startswith("##") and i < size:
            mask[i] = True
    return mask


def iter_words(ids: np.ndarray, cont: np.ndarray) -> Iterable[tuple[int, ...]]:
    """Words of one token sequence: a non-``##`` token followed by its ``##`` tokens."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return
    starts = np.flatnonzero(~cont[ids])
    if starts.size == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    bounds = np.append(starts, ids.size)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        yield tuple(int(x) for x in ids[a:b])


def word_counts(docs: Iterable[np.ndarray], cont: np.ndarray) -> Counter:
    """Counts of word types (token-id tuples) over documents."""
    c: Counter = Counter()
    for d in docs:
        c.update(iter_words(d, cont))
    return c


def overlap_stats(corpus_token_counts: np.ndarray, corpus_words: Counter,
                  task_docs: Sequence[np.ndarray], cont: np.ndarray, special: Sequence[int],
                  unk: int, k: int = 5) -> dict[str, Any]:
    """The overlap measures of the module docstring for one (corpus, task) pair."""
    special_set = set(int(s) for s in special) - {int(unk)}
    keep_ids = [np.asarray([t for t in d if int(t) not in special_set], np.int64)
                for d in task_docs]
    all_ids = np.concatenate(keep_ids) if keep_ids else np.zeros(0, np.int64)
    counts = np.asarray(corpus_token_counts)
    occ = counts[all_ids] if all_ids.size else np.zeros(0)
    tok_cov = float(((occ >= k) & (all_ids != unk)).mean()) if all_ids.size else 0.0
    task_types = set(int(t) for t in np.unique(all_ids)) - {int(unk)}
    corpus_types = set(int(t) for t in np.flatnonzero(counts > 0)) - {int(unk)}
    inter = len(task_types & corpus_types)
    tw: Counter = Counter()
    for d in keep_ids:
        tw.update(iter_words(d, cont))
    n_words = sum(tw.values())
    covered = sum(n for w, n in tw.items() if w != (int(unk),) and corpus_words.get(w, 0) >= k)
    t_wtypes = {w for w in tw if w != (int(unk),)}
    c_wtypes = {w for w in corpus_words if w != (int(unk),)}
    winter = len(t_wtypes & c_wtypes)
    return {
        "k": k,
        "task_tokens": int(all_ids.size),
        "task_words": int(n_words),
        "unk_rate": float((all_ids == unk).mean()) if all_ids.size else 0.0,
        "token_coverage_k": tok_cov,
        "word_coverage_k": covered / n_words if n_words else 0.0,
        "token_jaccard": inter / max(len(task_types | corpus_types), 1),
        "word_jaccard": winter / max(len(t_wtypes | c_wtypes), 1),
        "token_type_recall": inter / max(len(task_types), 1),
        "word_type_recall": winter / max(len(t_wtypes), 1),
        "task_token_types": len(task_types),
        "task_word_types": len(t_wtypes),
        "corpus_token_types": len(corpus_types),
        "corpus_word_types": len(c_wtypes),
    }


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation (nan when undefined)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for val in np.unique(v):
            idx = v == val
            r[idx] = r[idx].mean()
        return r

    x, y = np.asarray(x, float), np.asarray(y, float)
    return pearson(ranks(x), ranks(y))
