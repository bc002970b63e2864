"""Any Hugging Face ``datasets`` classification dataset as a task (``--task hf:PATH[:CONFIG]``).

The dataset is a folder written by ``save_to_disk``, a folder of data files or a Hub
name (:func:`tlm_jax.data.hf_source.locate`). Text columns are joined like a generic
file's; a ``ClassLabel`` label column gives the label names, any other column's
sorted unique values do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlm_jax.data.hf_source import few, iter_rows, locate, open_dataset, require_columns, text_value
from tlm_jax.data.labeled import ClassificationData, Pool
from tlm_jax.errors import TLMError
from tlm_jax.tasks.readers import TEXT_JOINER, join_text, label_mapping
from tlm_jax.tasks.splits import make_splits


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """``PATH[:CONFIG]`` -> ``(PATH, CONFIG or None)``; a path that exists keeps its colons."""
    if ":" not in spec or Path(spec).expanduser().exists():
        return spec, None
    path, _, config = spec.rpartition(":")
    return path, config or None


def _choose_splits(obj: Any, splits: Sequence[str] | None, where: str) -> dict[str, tuple[str, Any]]:
    """Role (``train``/``test``, or ``all`` to split here) -> (split name, dataset)."""
    if not isinstance(obj, dict):  # a lone saved Dataset: no split names
        if splits and len(splits) > 1:
            raise TLMError(f"{where} is one dataset without splits, but splits {list(splits)} were asked",
                           "leave task.hf_splits empty (it is divided here by test_fraction)")
        return {"all": (str(getattr(obj, "split", None) or "all"), obj)}
    available = list(obj)
    if splits:
        if len(splits) > 2:
            raise TLMError(f"task.hf_splits={list(splits)} names {len(splits)} splits",
                           "name 1 split (divided here) or 2 (train, test)")
        for s in splits:
            if s not in obj:
                raise TLMError(f"{where} has no split {s!r} (splits: {few(available)})",
                               "set task.hf_splits to those to use, e.g. [train,test]")
        chosen = list(splits)
    elif len(available) == 1:
        chosen = available
    elif "train" in obj and ("test" in obj or "validation" in obj):
        chosen = ["train", "test" if "test" in obj else "validation"]
    else:
        raise TLMError(f"{where} has splits {few(available)} and no train/test pair",
                       "set task.hf_splits=[TRAIN,TEST] (or one split to divide here)")
    if len(chosen) == 1:
        return {"all": (chosen[0], obj[chosen[0]])}
    return {"train": (chosen[0], obj[chosen[0]]), "test": (chosen[1], obj[chosen[1]])}


def load_hf_classification(
    path: str,
    text_columns: Sequence[str],
    label_column: str,
    *,
    config: str | None = None,
    splits: Sequence[str] | None = None,
    name: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    val_fraction: float = 0.0,
    max_train: int | None = None,
    max_test: int | None = None,
) -> ClassificationData:
    """A Hugging Face dataset as a classification task.

    Args:
        path: a ``save_to_disk`` folder, a folder of data files or a Hub name
            (``$TLM_DATA_DIR`` is searched for relative folders).
        text_columns: columns whose values are joined with ``" . "`` (empty ones skipped).
        label_column: the label column: a ``ClassLabel`` (its names become the label
            names; rows labelled ``-1``, i.e. unlabelled, are refused) or any column whose
            sorted unique values become the labels.
        config: the dataset's config (Hub datasets with several).
        splits: ``(train, test)`` split names, or one split divided here by
            ``test_fraction``/``*_per_class``. Default: ``train`` + ``test`` (else
            ``validation``), or the only split.
        name: task name to record (default: ``hf:PATH``).
        Others: see :func:`make_splits`.

    Raises:
        TLMError: a missing dataset, config, split or column (listing those that exist),
            unlabelled rows, or a single label value.
    """
    if isinstance(text_columns, str):
        text_columns = [text_columns]
    if not text_columns:
        raise TLMError("no text columns given", "set task.text_columns, e.g. [text]")
    if isinstance(splits, str):
        splits = [splits]
    loc = locate(path)
    where = loc.describe() + (f" config {config!r}" if config else "")
    roles = _choose_splits(open_dataset(loc, config), splits, where)
    split_of = {role: split for role, (split, _) in roles.items()}
    columns = [*dict.fromkeys([*map(str, text_columns), str(label_column)])]
    feature = None
    raw: dict[str, tuple[list[str], list[Any]]] = {}
    for role, (_, ds) in roles.items():
        at = f"{where} split {split_of[role]!r}"
        require_columns(ds, [str(c) for c in text_columns], at, "task.text_columns")
        require_columns(ds, [str(label_column)], at, "task.label_column")
        features = getattr(ds, "features", None) or {}
        feature = feature or features.get(str(label_column))
        texts, labels = [], []
        for i, row in enumerate(iter_rows(ds, columns)):
            texts.append(join_text(text_value(row[c], c, at, i) for c in map(str, text_columns)))
            labels.append(row[str(label_column)])
        raw[role] = (texts, labels)
    origin = f"hf:{loc.target}" + (f":{config}" if config else "")
    names = getattr(feature, "names", None)
    if names:
        label_names = [str(n) for n in names]
        for role, (_, values) in raw.items():
            bad = [v for v in values if not isinstance(v, int) or not 0 <= v < len(label_names)]
            if bad:
                raise TLMError(f"{where} split {split_of[role]!r} has {len(bad)} rows whose "
                               f"{label_column!r} is not one of its {len(label_names)} ClassLabel "
                               f"values (e.g. {bad[0]!r}; -1 marks an unlabelled row)",
                               "use labelled splits: task.hf_splits=[train,validation]")
        pools = {role: Pool(texts, np.asarray(values, dtype=np.int64), f"{origin}/{split_of[role]}")
                 for role, (texts, values) in raw.items()}
        label_map = "ClassLabel names"
    else:
        all_values = [v for _, values in raw.values() for v in values]
        label_names, mapping = label_mapping(all_values, None, Path(origin))
        pools = {role: Pool(texts, np.asarray([mapping[str(v).strip()] for v in values]),
                            f"{origin}/{split_of[role]}")
                 for role, (texts, values) in raw.items()}
        label_map = "sorted unique values (numeric order if all integers)"
    prov = {
        "hf": {"path": loc.target, "local": loc.local, "config": config,
               "splits": {role: split_of[role] for role in roles}},
        "text": f"columns {list(text_columns)} joined with {TEXT_JOINER!r}",
        "label_column": label_column,
        "label_map": label_map,
    }
    return make_splits(
        name or f"hf:{path}" + (f":{config}" if config else ""),
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
