"""Reading task files: the data directory, text/CSV/TSV/JSONL files, and any such file as a task.

:func:`resolve_data_dir` finds the data root (``$TLM_DATA_DIR``); the file
helpers open plain or gzipped UTF-8 text and read delimited rows with errors
that name the line; :func:`load_generic` turns any CSV/TSV/JSONL file into a
split :class:`~tlm_jax.data.labeled.ClassificationData` via
:func:`~tlm_jax.tasks.splits.make_splits`.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlm_jax.data.labeled import ClassificationData, Pool
from tlm_jax.errors import TLMError
from tlm_jax.tasks.splits import make_splits

DATA_DIR_ENV = "TLM_DATA_DIR"
TEXT_JOINER = " . "


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


def task_dir(data_dir: str | os.PathLike | None, folder: str, probe: Sequence[str]) -> Path:
    """The task's folder: ``<root>/<folder>``, or ``data_dir`` itself if it holds the files."""
    root = resolve_data_dir(data_dir)
    for candidate in (root / folder, root):
        if any((candidate / name).is_file() for name in probe):
            return candidate
    raise TLMError(
        f"none of {', '.join(probe)} found in {root / folder}",
        f"set {DATA_DIR_ENV} (or data_dir) to the folder that contains {folder}/",
    )


def first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    """The first of ``names`` that is a file in ``folder``, or None."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def open_text(path: Path) -> io.TextIOBase:
    """``path`` opened as UTF-8 text (gunzipped if it ends in ``.gz``); a clear error if missing."""
    if not path.is_file():
        raise TLMError(
            f"file {path} does not exist",
            f"check the path, or set {DATA_DIR_ENV} to the folder holding the data",
        )
    # newline="" lets the csv module see quoted newlines inside fields.
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115


def read_lines_file(path: Path) -> list[str]:
    """The non-blank lines of a text file, stripped."""
    with open_text(path) as f:
        return [line.strip() for line in f.read().splitlines() if line.strip()]


@functools.cache
def allow_any_field_size() -> int:
    """Lift the ``csv`` module's per-field limit (131,072 characters) as far as the platform allows.

    The limit guards nothing here: a row is held in memory anyway, and real corpora
    (20 Newsgroups' long posts, whole articles in one cell) exceed it. The largest
    value is ``sys.maxsize`` where a C long is 64 bits; where it is 32 bits (Windows)
    ``csv`` refuses that with OverflowError, so it is halved until accepted. Set once
    per process; returns the limit now in force.
    """
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return limit
        except OverflowError:
            limit //= 2


def read_delimited(
    path: Path, delimiter: str, *, has_header: bool, expected_columns: int | None = None
) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """Rows of a CSV/TSV file as ``(line number, fields)``; every row must have the same width.

    Blank lines are skipped. TSV is read without quote handling because
    unquoted TSV text routinely contains stray ``"`` characters. A field may be of
    any length (:func:`allow_any_field_size`).
    """
    allow_any_field_size()
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    try:
        with open_text(path) as f:
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


def join_text(parts: Iterable[str]) -> str:
    """``parts`` whitespace-normalised and joined with :data:`TEXT_JOINER`, empty ones skipped."""
    return TEXT_JOINER.join(p for p in (" ".join(str(x).split()) for x in parts) if p)


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


def label_mapping(
    values: list[Any], label_names: Sequence[str] | None, path: Path
) -> tuple[list[str], dict[str, int]]:
    """Label names and value -> index map: ``label_names`` order, else sorted unique values."""
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
            with open_text(path) as f:
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
                    texts.append(join_text(str(record[str(c)]) for c in text_columns))
                    raw_labels.append(record[str(label_column)])
        except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
            raise TLMError(
                f"{path} could not be read as UTF-8 text: {e}",
                "re-save it as UTF-8 (gzip optional)",
            ) from e
        if not texts:
            raise TLMError(f"{path} has no records", "point at a non-empty file")
        return texts, raw_labels
    header, rows = read_delimited(path, "," if fmt == "csv" else "\t", has_header=has_header)
    width = len(rows[0][1])
    text_idx = [_column_index(c, header, width, path) for c in text_columns]
    label_idx = _column_index(label_column, header, width, path)
    for _, fields in rows:
        texts.append(join_text(fields[i] for i in text_idx))
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
    names, mapping = label_mapping(all_labels, label_names, Path(path))
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
