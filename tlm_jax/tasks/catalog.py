"""The built-in tasks (AG News, DBpedia-14, FewRel, synthetic) and the task registry.

Each loader reads its files under ``$TLM_DATA_DIR`` (``synthetic`` is generated
by the package) and ends in :func:`~tlm_jax.tasks.splits.make_splits`;
:data:`TASKS` names them and :func:`load_task` loads any task by name,
including ``"generic"`` files and ``"tfds"`` datasets.
"""

from __future__ import annotations

import gzip
import html
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlm_jax.data.labeled import ClassificationData, Pool
from tlm_jax.data.synthetic import SYNTHETIC_KINDS, synthetic_labelled_texts
from tlm_jax.errors import TLMError
from tlm_jax.tasks.hf_reader import load_hf_classification, parse_hf_spec
from tlm_jax.tasks.readers import (
    TEXT_JOINER,
    first_existing,
    join_text,
    load_generic,
    open_text,
    read_delimited,
    read_lines_file,
    task_dir,
)
from tlm_jax.tasks.splits import make_splits
from tlm_jax.tasks.tfds_reader import load_tfds_classification

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
    folder_path = task_dir(data_dir, folder, test_names + train_names)
    classes_path = folder_path / "classes.txt"
    label_names = read_lines_file(classes_path)
    if len(label_names) < 2:
        raise TLMError(f"{classes_path} lists {len(label_names)} classes", "restore classes.txt")

    def read(path: Path) -> Pool:
        _, rows = read_delimited(path, ",", has_header=False, expected_columns=3)
        texts, labels = [], []
        for line, (label, title, body) in rows:
            labels.append(_int_label(label, len(label_names), path, line, label_names))
            if clean is not None:
                title, body = clean(title), clean(body)
            texts.append(join_text([title, body]))
        return Pool(texts, np.asarray(labels), str(path))

    train_path = first_existing(folder_path, train_names)
    test_path = first_existing(folder_path, test_names)
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
    folder = task_dir(data_dir, "fewrel", (f"{split_file}.json", f"{split_file}.json.gz"))
    path = first_existing(folder, (f"{split_file}.json", f"{split_file}.json.gz"))
    assert path is not None
    names_path = folder / "pid2name.json"
    try:
        with open_text(path) as f:
            raw = json.load(f)
        with open_text(names_path) as f:
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

_SPECIAL_TASKS = ("generic", "tfds", "hf")


def load_task(name: str, data_dir: str | os.PathLike | None = None, **options: Any) -> ClassificationData:
    """Load a task by name.

    ``name`` is a key of :data:`TASKS` (files under ``data_dir`` or
    ``$TLM_DATA_DIR``), ``"generic"`` (``path=``, ``text_columns=``,
    ``label_column=`` and the :func:`load_generic` options) or ``"tfds"``
    (``dataset=``, ``text_keys=``, ``label_key=`` and the
    :func:`load_tfds_classification` options; ``data_dir`` is then the TFDS
    data dir) or ``"hf"`` / ``"hf:PATH[:CONFIG]"`` (a Hugging Face dataset:
    ``path=``, ``config=``, ``splits=``, ``text_columns=`` (default ``["text"]``),
    ``label_column=`` (default ``"label"``); see :func:`load_hf_classification`).
    ``options`` are the split options of :func:`make_splits` plus loader-specific
    ones.

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
    if name == "hf" or name.startswith("hf:"):
        if name != "hf":
            options["path"], options["config"] = parse_hf_spec(name[3:])
        if not options.get("path"):
            raise TLMError("task 'hf' needs path", "pass path=... (a save_to_disk folder or a Hub name)")
        return load_hf_classification(
            options.pop("path"),
            options.pop("text_columns", ["text"]),
            options.pop("label_column", "label"),
            **options,
        )
    raise TLMError(f"unknown task {name!r}", f"use one of {', '.join([*TASKS, *_SPECIAL_TASKS])}")
