"""Downstream classification tasks: loaders with recorded, reproducible splits.

Built-in tasks (AG News, DBpedia-14, FewRel) read files under ``$TLM_DATA_DIR``;
:func:`load_generic` reads any CSV/TSV/JSONL file and
:func:`load_tfds_classification` any TFDS dataset. All of them share the split
options of :func:`make_splits` and return a :class:`ClassificationData`.
"""

from tlm_jax.tasks.datasets import (
    DATA_DIR_ENV,
    TASKS,
    ClassificationData,
    Pool,
    TaskSpec,
    clean_ag_news_text,
    infer_format,
    load_ag_news,
    load_dbpedia,
    load_fewrel,
    load_generic,
    load_task,
    load_tfds_classification,
    make_splits,
    mark_entities,
    resolve_data_dir,
)

__all__ = [
    "DATA_DIR_ENV",
    "TASKS",
    "ClassificationData",
    "Pool",
    "TaskSpec",
    "clean_ag_news_text",
    "infer_format",
    "load_ag_news",
    "load_dbpedia",
    "load_fewrel",
    "load_generic",
    "load_task",
    "load_tfds_classification",
    "make_splits",
    "mark_entities",
    "resolve_data_dir",
]
