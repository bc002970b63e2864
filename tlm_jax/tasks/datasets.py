"""Classification datasets with recorded, reproducible train/val/test splits.

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

import csv
import gzip
import hashlib
import html
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlm_jax.errors import TLMError

DATA_DIR_ENV = "TLM_DATA_DIR"
TEXT_JOINER = " . "

# Streams of the per-class generators, so that drawing one split never shifts
# the random choices of another.
_STREAM_TRAIN, _STREAM_TEST, _STREAM_VAL, _STREAM_CAP_TRAIN, _STREAM_CAP_TEST, _STREAM_SHUFFLE = range(6)


@dataclass
class ClassificationData:
    """A text classification task, split and ready for training.

    Labels are 0-based ``int32`` indices into ``label_names``. ``val_*`` may be
    empty. ``*_rows`` are the row numbers (0-based data records, header not
    counted) of each example in the source its split was drawn from, so splits
    can be audited and re-created. ``provenance`` is JSON-serialisable and meant
    to be written into ``results.json``.
    """

    name: str
    label_names: list[str]
    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    val_texts: list[str] = field(default_factory=list)
    val_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    provenance: dict = field(default_factory=dict)
    train_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    test_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    val_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def num_classes(self) -> int:
        """Number of labels (``len(label_names)``)."""
        return len(self.label_names)

    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {
            "train": len(self.train_texts),
            "val": len(self.val_texts),
            "test": len(self.test_texts),
        }


@dataclass
class Pool:
    """Rows read from one source, before splitting.

    Args:
        texts: one string per row.
        labels: 0-based label index per row.
        source: where the rows came from (a path or a TFDS split name).
    """

    texts: list[str]
    labels: np.ndarray
    source: str

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int32)
        if len(self.texts) != len(self.labels):
            raise ValueError("texts and labels differ in length")


# ----------------------------------------------------------------------------
# Data directory and file helpers
# ----------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data root: ``data_dir`` if given, else ``$TLM_DATA_DIR``.

    Raises:
        TLMError: neither is set, or the folder does not exist.
    """
    if data_dir is None:
        env = os.environ.get(DATA_DIR_ENV)
        if not env:
            raise TLMError(
                f"no data directory given and ${DATA_DIR_ENV} is not set",
                f"set {DATA_DIR_ENV} to the folder holding ag_news/, dbpedia_14/ and fewrel/, "
                "or pass data_dir",
            )
        data_dir = env
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise TLMError(
            f"data directory {path} does not exist",
            f"set {DATA_DIR_ENV} (or data_dir) to the folder holding the task folders",
        )
    return path


def _task_dir(data_dir: str | os.PathLike | None, folder: str, probe: Sequence[str]) -> Path:
    """The task's folder: ``<root>/<folder>``, or ``data_dir`` itself if it holds the files."""
    root = resolve_data_dir(data_dir)
    for candidate in (root / folder, root):
        if any((candidate / name).is_file() for name in probe):
            return candidate
    raise TLMError(
        f"none of {', '.join(probe)} found in {root / folder}",
        f"set {DATA_DIR_ENV} (or data_dir) to the folder that contains {folder}/",
    )


def _first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def _open_text(path: Path) -> io.TextIOBase:
    if not path.is_file():
        raise TLMError(
            f"file {path} does not exist",
            f"check the path, or set {DATA_DIR_ENV} to the folder holding the data",
        )
    # newline="" lets the csv module see quoted newlines inside fields.
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115


def _read_lines_file(path: Path) -> list[str]:
    with _open_text(path) as f:
        return [line.strip() for line in f.read().splitlines() if line.strip()]


def _read_delimited(
    path: Path, delimiter: str, *, has_header: bool, expected_columns: int | None = None
) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """Rows of a CSV/TSV file as ``(line number, fields)``; every row must have the same width.

    Blank lines are skipped. TSV is read without quote handling because
    unquoted TSV text routinely contains stray ``"`` characters.
    """
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    try:
        with _open_text(path) as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
            for fields in reader:
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                if has_header and header is None:
                    header = [h.strip() for h in fields]
                    if expected_columns is None:
                        expected_columns = len(header)
                    continue
                if expected_columns is None:
                    expected_columns = len(fields)
                if len(fields) != expected_columns:
                    raise TLMError(
                        f"{path} line {reader.line_num} (data row {len(rows) + 1}): expected "
                        f"{expected_columns} columns, found {len(fields)}",
                        "fix or remove that row (quote fields that contain the delimiter)",
                    )
                rows.append((reader.line_num, fields))
    except csv.Error as e:
        raise TLMError(f"{path} is not valid delimited text: {e}", "fix the file") from e
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
        raise TLMError(
            f"{path} could not be read as UTF-8 text: {e}", "re-save it as UTF-8 (gzip optional)"
        ) from e
    if not rows:
        raise TLMError(f"{path} has no data rows", "point at a non-empty file")
    return header, rows


def _int_label(value: str, num_classes: int, path: Path, line: int, names: list[str]) -> int:
    """A 1-based class index from a Zhang et al. CSV, as a 0-based label."""
    try:
        label = int(value.strip())
    except ValueError:
        label = 0
    if not 1 <= label <= num_classes:
        raise TLMError(
            f"{path} line {line}: class {value!r} is not an integer in 1..{num_classes} "
            f"({len(names)} classes in classes.txt)",
            "fix the row's first column",
        )
    return label - 1


def _join_text(parts: Iterable[str]) -> str:
    return TEXT_JOINER.join(p for p in (" ".join(str(x).split()) for x in parts) if p)


# ----------------------------------------------------------------------------
# Shared splitting and sampling
# ----------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------
# Built-in tasks
# ----------------------------------------------------------------------------

_AG_BACKSLASH = re.compile(r"\\+")
# AG News stores HTML entities with the "&" replaced by a space (" #39;s",
# " quot;Hi"); "&lt;"/"&gt;" survive intact and wrap leftover HTML tags.
_AG_ENTITY = re.compile(r"( ?)(&?)(#\d{2,4}|quot|amp|lt|gt|hellip|nbsp);")
_AG_TAG = re.compile(r"</?[A-Za-z][^<>]*>")


def _ag_entity(match: re.Match) -> str:
    char = html.unescape(f"&{match.group(3)};")
    # Where the "&" was lost it was replaced by the space before the entity
    # ("Cisse #39;s" was "Cisse&#39;s"), so that space goes too.
    return match.group(1) + char if match.group(2) else char


def clean_ag_news_text(text: str) -> str:
    """Undo the AG News encoding damage: backslash line breaks, mangled entities, HTML tags.

    The AG readme says newlines are written as backslash+``n``, but the file
    actually marks a line break with a bare backslash glued to the next word
    (``second\\team``, ``gave\\no``); reading ``\\n`` as an escape would turn
    ``gave\\no`` into ``gave o``. So ``\\$`` becomes ``$`` and any other run of
    backslashes a space. Entities whose ``&`` was lost (``#39;``, ``quot;``,
    ``amp;``, ``#36;``...) are decoded and leftover HTML tags removed.
    """
    text = text.replace("\\$", "$")
    text = _AG_BACKSLASH.sub(" ", text)
    text = _AG_ENTITY.sub(_ag_entity, text)
    text = _AG_TAG.sub(" ", text)
    return " ".join(text.split())


def _load_zhang_csv(
    task: str,
    data_dir: str | os.PathLike | None,
    folder: str,
    clean: Callable[[str], str] | None,
    options: dict[str, Any],
) -> ClassificationData:
    """Tasks in the Zhang et al. (2015) layout: ``class,title,body`` CSVs plus classes.txt."""
    train_names = ("train.csv", "train.csv.gz")
    test_names = ("test.csv", "test.csv.gz")
    folder_path = _task_dir(data_dir, folder, test_names + train_names)
    classes_path = folder_path / "classes.txt"
    label_names = _read_lines_file(classes_path)
    if len(label_names) < 2:
        raise TLMError(f"{classes_path} lists {len(label_names)} classes", "restore classes.txt")

    def read(path: Path) -> Pool:
        _, rows = _read_delimited(path, ",", has_header=False, expected_columns=3)
        texts, labels = [], []
        for line, (label, title, body) in rows:
            labels.append(_int_label(label, len(label_names), path, line, label_names))
            if clean is not None:
                title, body = clean(title), clean(body)
            texts.append(_join_text([title, body]))
        return Pool(texts, np.asarray(labels), str(path))

    train_path = _first_existing(folder_path, train_names)
    test_path = _first_existing(folder_path, test_names)
    if test_path is None:
        # A train file alone is still usable: it is split here like a single pool.
        test_path, train_path = train_path, None
    assert test_path is not None
    if train_path is None:
        pools = {"all": read(test_path)}
    else:
        pools = {"train": read(train_path), "test": read(test_path)}
    prov = {
        "files": {
            "train": str(train_path) if train_path else None,
            "test": str(test_path),
            "classes": str(classes_path),
        },
        "text": f"title{TEXT_JOINER}body",
        "cleaning": clean.__name__ if clean else None,
        "label_map": "class index i in the file -> label i-1 (classes.txt order)",
    }
    return make_splits(task, label_names, pools, provenance=prov, **options)


def load_ag_news(
    data_dir: str | os.PathLike | None = None,
    *,
    clean: bool = True,
    seed: int = 0,
    test_fraction: float = 0.2,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    val_fraction: float = 0.0,
    max_train: int | None = None,
    max_test: int | None = None,
) -> ClassificationData:
    """AG News (4 topics) from ``<data_dir>/ag_news/{train,test}.csv[.gz]`` + ``classes.txt``.

    Text is ``title . description``, with the AG encoding damage repaired when
    ``clean`` (see :func:`clean_ag_news_text`; ``clean=False`` keeps the raw
    text). The shared copy holds only the official test
    file (7,600 rows, 1,900 per class), so unless a ``train.csv`` is present the
    train/test split is made here; the paper's 1,000/1,000 per class then does
    not fit (at most 1,900 per class in total). Split options: see
    :func:`make_splits`.
    """
    options = dict(
        seed=seed,
        test_fraction=test_fraction,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        val_fraction=val_fraction,
        max_train=max_train,
        max_test=max_test,
    )
    return _load_zhang_csv("ag_news", data_dir, "ag_news", clean_ag_news_text if clean else None, options)


def load_dbpedia(
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    val_fraction: float = 0.0,
    max_train: int | None = None,
    max_test: int | None = None,
) -> ClassificationData:
    """DBpedia-14 (14 ontology classes) from ``<data_dir>/dbpedia_14/{train,test}.csv``.

    Text is ``title . content``. The shared copy has a separate train file
    (1,400 rows, 100 per class) and test file (7,685 rows), so no split is made
    here and ``test_fraction`` is unused. Split options: see :func:`make_splits`.
    """
    options = dict(
        seed=seed,
        test_fraction=test_fraction,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        val_fraction=val_fraction,
        max_train=max_train,
        max_test=max_test,
    )
    return _load_zhang_csv("dbpedia", data_dir, "dbpedia_14", None, options)


def mark_entities(tokens: Sequence[str], head: Sequence[int], tail: Sequence[int]) -> str:
    """Join ``tokens`` with spaces, wrapping the head span in ``[E1] .. [/E1]`` and the tail in
    ``[E2] .. [/E2]``.

    A span runs from its smallest to its largest position, so the order of the
    spans in the sentence (tail before head is common) and nesting both work.
    Whitespace-only tokens, which FewRel contains, are dropped by the final
    whitespace normalisation.
    """
    spans = [("[E1]", "[/E1]", min(head), max(head)), ("[E2]", "[/E2]", min(tail), max(tail))]
    pieces: list[str] = []
    for i, token in enumerate(tokens):
        # Spans opening here: the longer one opens first so that nested spans close inside out.
        for open_, _, start, _end in sorted(spans, key=lambda s: -s[3]):
            if start == i:
                pieces.append(open_)
        pieces.append(token)
        for _, close, _start, end in sorted(spans, key=lambda s: -s[2]):
            if end == i:
                pieces.append(close)
    return " ".join(" ".join(pieces).split())


def _pid_key(pid: str) -> tuple[int, str]:
    digits = pid[1:] if pid[:1] in "PQ" else pid
    return (int(digits), pid) if digits.isdigit() else (1 << 62, pid)


def load_fewrel(
    data_dir: str | os.PathLike | None = None,
    *,
    split_file: str = "val_wiki",
    relations: Sequence[str] | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    val_fraction: float = 0.0,
    max_train: int | None = None,
    max_test: int | None = None,
) -> ClassificationData:
    """FewRel 1.0 as N-way relation classification.

    Reads ``<data_dir>/fewrel/<split_file>.json[.gz]`` (relation PID -> list of
    instances) and ``pid2name.json``. The text is the sentence with entity
    markers (:func:`mark_entities`, first mention of each entity); labels are
    the relations in numeric PID order, ``label_names`` their names from
    ``pid2name.json`` (PIDs in ``provenance["label_ids"]``). FewRel's relations
    differ between its files, so one file is one task and the train/test split
    is made here (the paper: 630/70 per relation).

    Args:
        split_file: which FewRel file (``val_wiki`` is the one shared here).
        relations: PIDs to keep (N-way with N = len); default all.
        Others: see :func:`make_splits`.
    """
    folder = _task_dir(data_dir, "fewrel", (f"{split_file}.json", f"{split_file}.json.gz"))
    path = _first_existing(folder, (f"{split_file}.json", f"{split_file}.json.gz"))
    assert path is not None
    names_path = folder / "pid2name.json"
    try:
        with _open_text(path) as f:
            raw = json.load(f)
        with _open_text(names_path) as f:
            pid2name = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
        raise TLMError(f"FewRel file could not be parsed: {e}", "restore the original JSON") from e
    if not isinstance(raw, dict) or not raw:
        raise TLMError(
            f"{path} is not a JSON object of relation -> instances",
            "use FewRel's train_wiki/val_wiki JSON",
        )
    pids = sorted(raw, key=_pid_key)
    if relations is not None:
        unknown = [r for r in relations if r not in raw]
        if unknown:
            raise TLMError(f"relations {unknown} are not in {path}", f"choose among {', '.join(pids)}")
        pids = sorted(dict.fromkeys(relations), key=_pid_key)
    label_names = []
    for pid in pids:
        entry = pid2name.get(pid)
        label_names.append(str(entry[0]) if entry else pid)
    texts, labels = [], []
    for label, pid in enumerate(pids):
        for n, inst in enumerate(raw[pid]):
            try:
                head, tail = inst["h"][2][0], inst["t"][2][0]
                texts.append(mark_entities(inst["tokens"], head, tail))
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise TLMError(
                    f"{path}: relation {pid} instance {n} is malformed ({type(e).__name__}: {e})",
                    "each instance needs tokens and h/t = [name, id, [[positions]]]",
                ) from e
            labels.append(label)
    prov = {
        "files": {"instances": str(path), "relation_names": str(names_path)},
        "text": "tokens joined by spaces with [E1] head [/E1] and [E2] tail [/E2] markers "
        "(first mention of each entity)",
        "label_ids": pids,
    }
    pool = Pool(texts, np.asarray(labels), str(path))
    return make_splits(
        "fewrel",
        label_names,
        {"all": pool},
        seed=seed,
        test_fraction=test_fraction,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        val_fraction=val_fraction,
        max_train=max_train,
        max_test=max_test,
        provenance=prov,
    )


def load_synthetic(
    data_dir: str | os.PathLike | None = None,
    *,
    rows_per_class: int = 1000,
    window: int = 2,
    seed: int = 0,
    test_fraction: float = 0.2,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    val_fraction: float = 0.0,
    max_train: int | None = None,
    max_test: int | None = None,
) -> ClassificationData:
    """Which kind of article a passage comes from (person / city / team / season), offline.

    The package writes this task itself
    (:func:`tlm_jax.data.synthetic.synthetic_labelled_texts`), so a fresh clone can
    fine-tune with no data directory (``data_dir`` is ignored). The pool is fixed,
    like a file: ``rows_per_class`` unique passages per kind, each ``window``
    consecutive sentences after the title sentence of an article generated from a
    stream separate from the pretraining corpus's documents. ``seed`` chooses the
    split only; the train/test split is made here (see :func:`make_splits`).
    Passages of a kind share templates, so keywords go a long way (as in AG News);
    the first word alone does not decide the class ("The" opens city, team and
    season passages alike).

    Args:
        rows_per_class: passages generated per kind (the most train + test rows a
            class can give).
        window: sentences per passage (1-4).
        Others: see :func:`make_splits`.
    """
    del data_dir
    from tlm_jax.data.synthetic import SYNTHETIC_KINDS, synthetic_labelled_texts  # noqa: PLC0415

    label_of = {k: i for i, k in enumerate(SYNTHETIC_KINDS)}
    texts, labels = [], []
    for kind, text in synthetic_labelled_texts(rows_per_class, window=window):
        texts.append(text)
        labels.append(label_of[kind])
    source = f"synthetic:{rows_per_class}x{len(SYNTHETIC_KINDS)},window={window}"
    prov = {
        "generator": "tlm_jax.data.synthetic.synthetic_labelled_texts",
        "rows_per_class": rows_per_class,
        "text": f"{window} consecutive sentences after the title sentence of a synthetic "
        "article (seed stream separate from the pretraining corpus), unique per class",
        "label_map": "the article generator that wrote the passage",
    }
    return make_splits(
        "synthetic",
        list(SYNTHETIC_KINDS),
        {"all": Pool(texts, np.asarray(labels), source)},
        seed=seed,
        test_fraction=test_fraction,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        val_fraction=val_fraction,
        max_train=max_train,
        max_test=max_test,
        provenance=prov,
    )


# ----------------------------------------------------------------------------
# Generic files
# ----------------------------------------------------------------------------

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def infer_format(path: str | os.PathLike) -> str:
    """``csv``, ``tsv`` or ``jsonl`` from the file name (a ``.gz`` suffix is looked through)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    if suffix not in _FORMATS:
        raise TLMError(
            f"cannot tell the format of {path} from its suffix {suffix!r}",
            "pass format='csv', 'tsv' or 'jsonl'",
        )
    return _FORMATS[suffix]


def _column_index(column: str | int, header: list[str] | None, width: int, path: Path) -> int:
    if header is not None and isinstance(column, str) and column in header:
        return header.index(column)
    if isinstance(column, int) or (isinstance(column, str) and column.strip().isdigit()):
        index = int(column)
        if 0 <= index < width:
            return index
    available = header if header is not None else [str(i) for i in range(width)]
    raise TLMError(
        f"column {column!r} not found in {path}",
        f"use one of {available}"
        + ("" if header is not None else " (0-based indices: the file has no header)"),
    )


def _label_mapping(
    values: list[Any], label_names: Sequence[str] | None, path: Path
) -> tuple[list[str], dict[str, int]]:
    keys = [str(v).strip() for v in values]
    if label_names is not None:
        mapping = {str(n): i for i, n in enumerate(label_names)}
        unknown = sorted(set(keys) - set(mapping))
        if unknown:
            raise TLMError(
                f"{path} has label values {unknown[:5]} not in label_names",
                "add them to label_names or fix the file",
            )
        return [str(n) for n in label_names], mapping
    unique = set(keys)
    try:
        ordered = sorted(unique, key=lambda v: (int(v), v))
    except ValueError:
        ordered = sorted(unique)
    if len(ordered) < 2:
        raise TLMError(
            f"label column of {path} has a single value {ordered}; classification needs 2+",
            "pick the right label column",
        )
    return ordered, {v: i for i, v in enumerate(ordered)}


def _read_generic(
    path: Path,
    fmt: str,
    text_columns: Sequence[str | int],
    label_column: str | int,
    has_header: bool,
) -> tuple[list[str], list[Any]]:
    texts: list[str] = []
    raw_labels: list[Any] = []
    if fmt == "jsonl":
        try:
            with _open_text(path) as f:
                for line_no, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise TLMError(
                            f"{path} line {line_no} is not valid JSON: {e}",
                            "fix that line (one JSON object per line)",
                        ) from e
                    if not isinstance(record, dict):
                        raise TLMError(
                            f"{path} line {line_no} is not a JSON object",
                            "write one object per line",
                        )
                    missing = [c for c in [*text_columns, label_column] if str(c) not in record]
                    if missing:
                        raise TLMError(
                            f"{path} line {line_no} has no key(s) {missing}",
                            f"use keys among {sorted(record)}",
                        )
                    texts.append(_join_text(str(record[str(c)]) for c in text_columns))
                    raw_labels.append(record[str(label_column)])
        except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
            raise TLMError(
                f"{path} could not be read as UTF-8 text: {e}",
                "re-save it as UTF-8 (gzip optional)",
            ) from e
        if not texts:
            raise TLMError(f"{path} has no records", "point at a non-empty file")
        return texts, raw_labels
    header, rows = _read_delimited(path, "," if fmt == "csv" else "\t", has_header=has_header)
    width = len(rows[0][1])
    text_idx = [_column_index(c, header, width, path) for c in text_columns]
    label_idx = _column_index(label_column, header, width, path)
    for _, fields in rows:
        texts.append(_join_text(fields[i] for i in text_idx))
        raw_labels.append(fields[label_idx])
    return texts, raw_labels


def load_generic(
    path: str | os.PathLike,
    text_columns: Sequence[str | int],
    label_column: str | int,
    *,
    format: str | None = None,
    has_header: bool = True,
    test_path: str | os.PathLike | None = None,
    label_names: Sequence[str] | None = None,
    name: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    val_fraction: float = 0.0,
    max_train: int | None = None,
    max_test: int | None = None,
) -> ClassificationData:
    """Any CSV/TSV/JSONL file as a classification task.

    Args:
        path: the file (``.gz`` allowed); split here unless ``test_path`` is given.
        text_columns: columns whose values are joined with ``" . "`` (empty ones
            skipped). Header names, or 0-based indices (required when
            ``has_header=False``); JSON keys for JSONL.
        label_column: the label column/key. Values may be strings or integers.
        format: ``"csv"``, ``"tsv"`` (read without quote handling) or
            ``"jsonl"``; inferred from the suffix when None.
        has_header: whether a CSV/TSV's first row names the columns.
        test_path: a separate test file in the same layout.
        label_names: fixes the label order; by default labels are the sorted
            unique values (numerically if all are integers, so ``"10"`` comes
            after ``"9"``), across both files.
        name: task name to record (default: the file name).
        Others: see :func:`make_splits`.

    Raises:
        TLMError: missing file, unknown format or column, a row with the wrong
            number of columns (named by line), or a single label value.
    """
    if isinstance(text_columns, str | int):
        text_columns = [text_columns]
    if not text_columns:
        raise TLMError("no text columns given", "pass text_columns, e.g. ['text']")
    paths = {"train": Path(path)} if test_path is not None else {"all": Path(path)}
    if test_path is not None:
        paths["test"] = Path(test_path)
    read: dict[str, tuple[list[str], list[Any]]] = {}
    fmts = {}
    for split, p in paths.items():
        fmts[split] = format or infer_format(p)
        if fmts[split] not in ("csv", "tsv", "jsonl"):
            raise TLMError(f"unknown format {fmts[split]!r}", "use 'csv', 'tsv' or 'jsonl'")
        read[split] = _read_generic(p, fmts[split], text_columns, label_column, has_header)
    all_labels = [v for _, values in read.values() for v in values]
    names, mapping = _label_mapping(all_labels, label_names, Path(path))
    pools = {
        split: Pool(texts, np.asarray([mapping[str(v).strip()] for v in values]), str(paths[split]))
        for split, (texts, values) in read.items()
    }
    prov = {
        "files": {split: str(p) for split, p in paths.items()},
        "format": fmts,
        "text": f"columns {list(text_columns)} joined with {TEXT_JOINER!r}",
        "label_column": label_column,
        "label_map": "given label_names order"
        if label_names is not None
        else "sorted unique values (numeric order if all integers)",
    }
    return make_splits(
        name or Path(path).name,
        names,
        pools,
        seed=seed,
        test_fraction=test_fraction,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        val_fraction=val_fraction,
        max_train=max_train,
        max_test=max_test,
        provenance=prov,
    )


# ----------------------------------------------------------------------------
# TFDS
# ----------------------------------------------------------------------------


def _as_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _as_str(value.item())
    return str(value)


def _iter_records(source: Any, batch: int = 1024) -> Iterable[dict]:
    """All records of a TFDS data source, read in batches where the source allows."""
    n = len(source)
    batched = hasattr(source, "__getitems__")
    for start in range(0, n, batch):
        ids = list(range(start, min(start + batch, n)))
        if batched:
            try:
                yield from source.__getitems__(ids)
                continue
            except TypeError:
                # tfds.testing.mock_data's __getitems__ is broken in tfds 4.9.x;
                # item-by-item access works everywhere.
                batched = False
        for i in ids:
            yield source[i]


def load_tfds_classification(
    name: str,
    text_keys: Sequence[str],
    label_key: str,
    data_dir: str | os.PathLike | None = None,
    splits: Sequence[str] = ("train", "test"),
    *,
    download: bool = False,
    seed: int = 0,
    test_fraction: float = 0.2,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    val_fraction: float = 0.0,
    max_train: int | None = None,
    max_test: int | None = None,
) -> ClassificationData:
    """A TFDS dataset read through ``tfds.data_source`` (random access, ArrayRecord).

    E.g. ``("ag_news_subset", ["title", "description"], "label")`` or
    ``("dbpedia", ["title", "content"], "label")``. The dataset must already be
    prepared in ``data_dir`` in ``array_record`` format unless ``download``.

    Args:
        name: TFDS name (with optional ``:version``).
        text_keys: feature keys joined with ``" . "``.
        label_key: the label feature; a ``ClassLabel`` gives the label names,
            otherwise the sorted unique values do.
        data_dir: TFDS data dir (TFDS's default when None).
        splits: ``(train, test)`` split names, or a single split that is then
            divided here by ``test_fraction``/``*_per_class``.
        download: let TFDS download and prepare the dataset if missing.
        Others: see :func:`make_splits`.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tfds is a dependency
        raise TLMError("tensorflow-datasets is not installed", "pip install tensorflow-datasets") from e
    if isinstance(splits, str):
        splits = [splits]
    if len(splits) not in (1, 2):
        raise TLMError(f"splits={list(splits)} must name 1 or 2 splits", "pass (train, test)")
    if isinstance(text_keys, str):
        text_keys = [text_keys]
    keys = {"train": splits[0], "test": splits[1]} if len(splits) == 2 else {"all": splits[0]}
    label_names: list[str] | None = None
    raw: dict[str, tuple[list[str], list[Any]]] = {}
    version = None
    for role, split in keys.items():
        try:
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise TLMError(f"TFDS has no dataset {name!r}", "check the name with `tfds list`") from e
        except Exception as e:  # TFDS raises many types (missing files, bad split, format)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TLMError(
                f"TFDS could not open {name} split {split!r} in {data_dir or 'the default dir'}: {first}",
                f"prepare it first (tfds build {name} --file_format=array_record) or pass "
                "download=True; check the split name",
            ) from e
        info = source.dataset_info
        version = str(info.version)
        features = info.features
        missing = [k for k in [*text_keys, label_key] if k not in features]
        if missing:
            raise TLMError(
                f"TFDS dataset {name} has no feature(s) {missing}",
                f"use keys among {sorted(features.keys())}",
            )
        if label_names is None and hasattr(features[label_key], "names"):
            label_names = [str(n) for n in features[label_key].names]
        texts, labels = [], []
        for rec in _iter_records(source):
            texts.append(_join_text(_as_str(rec[k]) for k in text_keys))
            labels.append(rec[label_key])
        raw[role] = (texts, labels)
    origin = f"tfds:{name}@{version}"
    if label_names is not None:
        pools = {
            role: Pool(texts, np.asarray([int(v) for v in values]), f"{origin}/{keys[role]}")
            for role, (texts, values) in raw.items()
        }
        label_map = "ClassLabel names"
    else:
        all_values = [_as_str(v) for _, values in raw.values() for v in values]
        label_names, mapping = _label_mapping(all_values, None, Path(origin))
        pools = {
            role: Pool(
                texts,
                np.asarray([mapping[_as_str(v).strip()] for v in values]),
                f"{origin}/{keys[role]}",
            )
            for role, (texts, values) in raw.items()
        }
        label_map = "sorted unique values"
    prov = {
        "tfds": {
            "name": name,
            "version": version,
            "splits": dict(keys),
            "data_dir": str(data_dir) if data_dir else None,
        },
        "text": f"features {list(text_keys)} joined with {TEXT_JOINER!r}",
        "label_map": label_map,
    }
    return make_splits(
        name,
        label_names,
        pools,
        seed=seed,
        test_fraction=test_fraction,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        val_fraction=val_fraction,
        max_train=max_train,
        max_test=max_test,
        provenance=prov,
    )


# ----------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """A built-in task: its loader and the paper's per-class split sizes."""

    loader: Callable[..., ClassificationData]
    description: str
    paper_options: dict[str, int]


TASKS: dict[str, TaskSpec] = {
    "ag_news": TaskSpec(
        load_ag_news,
        "AG News topic classification, 4 classes (data dir: ag_news/)",
        # The paper samples 1,000/1,000 from the 120k train + 7.6k test files;
        # with only the 7,600-row test file here at most 1,900 per class exist.
        {"train_per_class": 1000, "test_per_class": 1000},
    ),
    "dbpedia": TaskSpec(
        load_dbpedia,
        "DBpedia-14 ontology classification, 14 classes (data dir: dbpedia_14/)",
        {"train_per_class": 100, "test_per_class": 100},
    ),
    "fewrel": TaskSpec(
        load_fewrel,
        "FewRel 1.0 relation classification with entity markers, 16 relations (data dir: fewrel/)",
        {"train_per_class": 630, "test_per_class": 70},
    ),
    "synthetic": TaskSpec(
        load_synthetic,
        "article kind (person/city/team/season) of synthetic passages, 4 classes (built in, offline)",
        # Not a paper task: half of each class's 1,000 generated passages on each side.
        {"train_per_class": 500, "test_per_class": 500},
    ),
}

_SPECIAL_TASKS = ("generic", "tfds")


def load_task(name: str, data_dir: str | os.PathLike | None = None, **options: Any) -> ClassificationData:
    """Load a task by name.

    ``name`` is a key of :data:`TASKS` (files under ``data_dir`` or
    ``$TLM_DATA_DIR``), ``"generic"`` (``path=``, ``text_columns=``,
    ``label_column=`` and the :func:`load_generic` options) or ``"tfds"``
    (``dataset=``, ``text_keys=``, ``label_key=`` and the
    :func:`load_tfds_classification` options; ``data_dir`` is then the TFDS
    data dir). ``options`` are the split options of :func:`make_splits` plus
    loader-specific ones.

    Raises:
        TLMError: unknown task, or a missing required option.
    """
    if name in TASKS:
        return TASKS[name].loader(data_dir, **options)
    if name == "generic":
        missing = [k for k in ("path", "text_columns", "label_column") if k not in options]
        if missing:
            raise TLMError(
                f"task 'generic' needs {missing}",
                "pass path=..., text_columns=[...], label_column=...",
            )
        return load_generic(
            options.pop("path"), options.pop("text_columns"), options.pop("label_column"), **options
        )
    if name == "tfds":
        missing = [k for k in ("dataset", "text_keys", "label_key") if k not in options]
        if missing:
            raise TLMError(f"task 'tfds' needs {missing}", "pass dataset=..., text_keys=[...], label_key=...")
        return load_tfds_classification(
            options.pop("dataset"),
            options.pop("text_keys"),
            options.pop("label_key"),
            data_dir,
            **options,
        )
    raise TLMError(f"unknown task {name!r}", f"use one of {', '.join([*TASKS, *_SPECIAL_TASKS])}")
