"""The shared splitter: classification data split into recorded, reproducible train/val/test.

Every loader reads its source (CSV/TSV/JSONL files, the FewRel JSON, a TFDS
dataset, or the package's own synthetic articles), turns it into
``(text, label)`` pools and hands them to one shared splitter,
:func:`make_splits`, which implements the options common to all loaders:

``seed``
    Every random choice is derived from it; the same seed gives the same split.
``test_fraction``
    Only used when the source has no separate train split (AG News ships only
    its test file here, FewRel only its validation file): a stratified, seeded
    train/test split of what exists is made and recorded in the provenance.
``train_per_class`` / ``test_per_class``
    Balanced per-label subsampling (the paper uses AG News 1,000/1,000, DBpedia
    100/100 and FewRel 630/70 per label). Asking for more rows than a class has
    is an error that names the class and how many rows it has.
``val_fraction``
    A stratified validation split carved out of the (sampled) train split, for
    early stopping.
``max_train`` / ``max_test``
    Caps applied after the per-class sampling, keeping class proportions.

Sampling is *nested*: per class, the rows are put in one seeded order and test
rows are taken from its front, train rows from what follows. So for a fixed
seed the test split does not change when ``train_per_class`` changes, and a
smaller train split is a subset of a larger one (learning curves compare like
with like).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from tlm_jax.data.labeled import ClassificationData, Pool
from tlm_jax.errors import TLMError

# Streams of the per-class generators, so that drawing one split never shifts
# the random choices of another.
_STREAM_TRAIN, _STREAM_TEST, _STREAM_VAL, _STREAM_CAP_TRAIN, _STREAM_CAP_TEST, _STREAM_SHUFFLE = range(6)


def _check_options(
    test_fraction: float,
    train_per_class: int | None,
    test_per_class: int | None,
    val_fraction: float,
    max_train: int | None,
    max_test: int | None,
) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise TLMError(f"test_fraction={test_fraction} is outside (0, 1)", "use e.g. 0.2")
    if not 0.0 <= val_fraction < 1.0:
        raise TLMError(f"val_fraction={val_fraction} is outside [0, 1)", "use e.g. 0.1, or 0")
    for key, value in (
        ("train_per_class", train_per_class),
        ("test_per_class", test_per_class),
        ("max_train", max_train),
        ("max_test", max_test),
    ):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise TLMError(f"{key}={value!r} is not a positive integer", f"set {key} >= 1 or None")


def _fraction_count(fraction: float, n: int) -> int:
    """Round-half-up share of ``n``, keeping at least one row on each side when ``n >= 2``."""
    if n < 2 or fraction <= 0:
        return 0
    return min(max(math.floor(fraction * n + 0.5), 1), n - 1)


def _class_order(seed: int, stream: int, label: int, rows: np.ndarray) -> np.ndarray:
    # One generator per (seed, stream, class): a class's order does not depend
    # on how many rows other classes or other splits asked for.
    return np.random.default_rng([seed, stream, label]).permutation(rows)


def _too_few(
    label_names: list[str], label: int, available: int, requested: int, what: str, source: str
) -> TLMError:
    return TLMError(
        f"class {label_names[label]!r} has {available} rows in {source} but {requested} "
        f"{what} were requested",
        f"request at most {available} per class, or drop the class",
    )


def _per_class(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in range(num_classes)]


def _counts(labels: np.ndarray, label_names: list[str]) -> dict[str, int]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(label_names))
    return {name: int(counts[i]) for i, name in enumerate(label_names)}


def _stratified_cap(
    rows: np.ndarray, labels: np.ndarray, cap: int, num_classes: int, seed: int, stream: int
) -> np.ndarray:
    """At most ``cap`` of ``rows``, keeping class shares.

    Every class present keeps one row (if ``cap`` allows), so a cap never
    silently drops a rare class; the rest of the cap is shared in proportion to
    the classes' remaining rows, with largest-remainder rounding.
    """
    if len(rows) <= cap:
        return rows
    by_class = [np.sort(rows[labels[rows] == c]) for c in range(num_classes)]
    sizes = np.array([len(r) for r in by_class], dtype=np.int64)
    base = (sizes > 0).astype(np.int64)
    if base.sum() > cap:
        base[:] = 0
    spare = sizes - base
    exact = (cap - base.sum()) * spare / spare.sum()
    quota = base + np.floor(exact).astype(np.int64)
    # Ties broken by class index so the result is deterministic.
    remainder = exact - np.floor(exact)
    order = sorted(range(num_classes), key=lambda c: (-remainder[c], c))
    for c in order[: cap - int(quota.sum())]:
        quota[c] += 1
    kept = [_class_order(seed, stream, c, by_class[c])[: quota[c]] for c in range(num_classes)]
    return np.concatenate(kept)


def _fingerprint(texts: list[str], labels: np.ndarray) -> str:
    digest = hashlib.sha256()
    for line in sorted(f"{int(y)}\t{t}" for t, y in zip(texts, labels, strict=True)):
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def make_splits(
    name: str,
    label_names: list[str],
    pools: dict[str, Pool],
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    val_fraction: float = 0.0,
    max_train: int | None = None,
    max_test: int | None = None,
    provenance: dict | None = None,
) -> ClassificationData:
    """Split and subsample pools into a :class:`ClassificationData`; every loader ends here.

    Args:
        name: task name, recorded in the result.
        label_names: names of labels ``0..K-1``.
        pools: either ``{"train": Pool, "test": Pool}`` (the source has both
            splits) or ``{"all": Pool}`` (one pool, split here by class).
        seed: seed of every random choice.
        test_fraction: share of each class that goes to test when the split is
            made here and ``test_per_class`` is not given.
        train_per_class: rows per class in train (all remaining if None).
        test_per_class: rows per class in test.
        val_fraction: share of each class of the sampled train split moved to
            validation.
        max_train: cap on the train split (before the validation carve-out),
            class shares kept.
        max_test: cap on the test split, class shares kept.
        provenance: loader-specific facts to record (files, field mapping...).

    Raises:
        TLMError: bad options, fewer than two classes, or a class with fewer
            rows than requested.
    """
    _check_options(test_fraction, train_per_class, test_per_class, val_fraction, max_train, max_test)
    # Plain Python numbers, so that the provenance stays JSON-serialisable.
    test_fraction, val_fraction = float(test_fraction), float(val_fraction)
    train_per_class, test_per_class, max_train, max_test = (
        None if v is None else int(v) for v in (train_per_class, test_per_class, max_train, max_test)
    )
    k = len(label_names)
    seed = int(seed)
    sampling: list[str] = []
    available: dict[str, dict[str, int]] = {}

    if set(pools) == {"all"}:
        pool = pools["all"]
        train_pool = test_pool = pool
        available["all"] = _counts(pool.labels, label_names)
        present = [c for c in range(k) if available["all"][label_names[c]] > 0]
        train_parts, test_parts = [], []
        lone: list[str] = []
        for c, rows in enumerate(_per_class(pool.labels, k)):
            n = len(rows)
            n_test = test_per_class if test_per_class is not None else _fraction_count(test_fraction, n)
            n_train = train_per_class if train_per_class is not None else n - n_test
            if n_test + n_train > n:
                raise TLMError(
                    f"class {label_names[c]!r} has {n} rows in {pool.source} but "
                    f"{n_train} train + {n_test} test were requested per class",
                    f"request at most {n} in total per class (e.g. "
                    f"test_per_class={min(n_test, n)}, train_per_class={max(n - n_test, 0)})",
                )
            if n == 1 and test_per_class is None:
                lone.append(label_names[c])
            order = _class_order(seed, _STREAM_TEST, c, rows)
            test_parts.append(order[:n_test])
            train_parts.append(order[n_test : n_test + n_train])
        split_made_here = True
        sampling.append(
            "per class, rows put in a seeded order; test = first "
            + (
                f"{test_per_class}"
                if test_per_class is not None
                else f"round(test_fraction={test_fraction} * n)"
            )
            + ", train = the next "
            + (f"{train_per_class}" if train_per_class is not None else "rest")
        )
        if lone:
            sampling.append(f"classes with a single row kept in train only: {lone}")
        train_idx = np.concatenate(train_parts) if train_parts else np.zeros(0, np.int64)
        test_idx = np.concatenate(test_parts) if test_parts else np.zeros(0, np.int64)
    elif set(pools) == {"train", "test"}:
        train_pool, test_pool = pools["train"], pools["test"]
        split_made_here = False
        chosen: dict[str, np.ndarray] = {}
        for split, pool, per_class, stream in (
            ("train", train_pool, train_per_class, _STREAM_TRAIN),
            ("test", test_pool, test_per_class, _STREAM_TEST),
        ):
            available[split] = _counts(pool.labels, label_names)
            parts = []
            for c, rows in enumerate(_per_class(pool.labels, k)):
                if per_class is None:
                    parts.append(rows)
                    continue
                if len(rows) < per_class:
                    raise _too_few(label_names, c, len(rows), per_class, f"{split} rows", pool.source)
                parts.append(_class_order(seed, stream, c, rows)[:per_class])
            chosen[split] = np.concatenate(parts)
            sampling.append(
                f"{split}: " + ("all rows" if per_class is None else f"{per_class} per class, seeded")
            )
        train_idx, test_idx = chosen["train"], chosen["test"]
        present = [c for c in range(k) if available["train"][label_names[c]] > 0]
    else:
        raise ValueError(f"pools must be {{'all'}} or {{'train', 'test'}}, got {sorted(pools)}")

    if len(present) < 2:
        source = next(iter(pools.values())).source
        raise TLMError(
            f"{source} has {len(present)} class(es) with rows; classification needs at least 2",
            "check the label column, or the classes selected",
        )

    if max_train is not None and len(train_idx) > max_train:
        train_idx = _stratified_cap(train_idx, train_pool.labels, max_train, k, seed, _STREAM_CAP_TRAIN)
        sampling.append(f"train capped at max_train={max_train}, class shares kept")
    if max_test is not None and len(test_idx) > max_test:
        test_idx = _stratified_cap(test_idx, test_pool.labels, max_test, k, seed, _STREAM_CAP_TEST)
        sampling.append(f"test capped at max_test={max_test}, class shares kept")

    val_idx = np.zeros(0, np.int64)
    if val_fraction > 0:
        keep, val = [], []
        for c in range(k):
            rows = np.sort(train_idx[train_pool.labels[train_idx] == c])
            order = _class_order(seed, _STREAM_VAL, c, rows)
            n_val = _fraction_count(val_fraction, len(rows))
            val.append(order[:n_val])
            keep.append(order[n_val:])
        train_idx, val_idx = np.concatenate(keep), np.concatenate(val)
        sampling.append(f"validation = round(val_fraction={val_fraction} * n) of each class's train rows")

    def take(pool: Pool, idx: np.ndarray, split_id: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        # Seeded shuffle so that a trainer that forgets to shuffle does not see
        # class-sorted batches.
        rng = np.random.default_rng([seed, _STREAM_SHUFFLE, split_id])
        idx = rng.permutation(np.sort(idx.astype(np.int64)))
        return [pool.texts[i] for i in idx], pool.labels[idx].astype(np.int32), idx

    train_texts, train_labels, train_rows = take(train_pool, train_idx, 0)
    test_texts, test_labels, test_rows = take(test_pool, test_idx, 1)
    val_texts, val_labels, val_rows = take(train_pool, val_idx, 2)

    prov: dict[str, Any] = {"task": name}
    prov.update(provenance or {})
    prov.update(
        {
            "sources": {split: pool.source for split, pool in pools.items()},
            "split_made_here": split_made_here,
            "seed": seed,
            "options": {
                "test_fraction": test_fraction if split_made_here and test_per_class is None else None,
                "train_per_class": train_per_class,
                "test_per_class": test_per_class,
                "val_fraction": val_fraction,
                "max_train": max_train,
                "max_test": max_test,
            },
            "sampling": sampling,
            "available_per_class": available,
            "counts": {
                "train": _counts(train_labels, label_names),
                "val": _counts(val_labels, label_names),
                "test": _counts(test_labels, label_names),
            },
            "sizes": {"train": len(train_texts), "val": len(val_texts), "test": len(test_texts)},
            "fingerprints": {
                "train": _fingerprint(train_texts, train_labels),
                "val": _fingerprint(val_texts, val_labels),
                "test": _fingerprint(test_texts, test_labels),
            },
            "label_names": list(label_names),
        }
    )
    return ClassificationData(
        name=name,
        label_names=list(label_names),
        train_texts=train_texts,
        train_labels=train_labels,
        test_texts=test_texts,
        test_labels=test_labels,
        val_texts=val_texts,
        val_labels=val_labels,
        provenance=prov,
        train_rows=train_rows,
        test_rows=test_rows,
        val_rows=val_rows,
    )
