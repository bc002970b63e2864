"""Labelled text data shared by the task loaders and the evaluation code.

:class:`ClassificationData` is a split, ready-to-train classification task;
:class:`Pool` the rows of one source before splitting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
