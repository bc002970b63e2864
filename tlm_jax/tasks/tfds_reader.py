"""Any TFDS classification dataset as a task, read through ``tfds.data_source``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlm_jax.data.labeled import ClassificationData, Pool
from tlm_jax.data.source_readers import import_tfds
from tlm_jax.errors import TLMError
from tlm_jax.tasks.readers import TEXT_JOINER, join_text, label_mapping
from tlm_jax.tasks.splits import make_splits


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
    tfds = import_tfds()
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
            texts.append(join_text(_as_str(rec[k]) for k in text_keys))
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
        label_names, mapping = label_mapping(all_values, None, Path(origin))
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
