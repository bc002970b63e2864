"""The ``tlm finetune`` settings: task, head, budget; YAML + ``--task`` + ``key=value`` overrides."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tlm_jax.config import (
    MERGE_ERRORS,
    OPTIM_RANGES,
    MeshConfig,
    ModelConfig,
    OptimConfig,
    check_ranges,
    check_sections,
    load_yaml,
    merge_error,
    parse_overrides,
    show,
    validate_model,
)
from tlm_jax.errors import TLMError
from tlm_jax.models.classifier import POOLINGS
from tlm_jax.tasks.hf_reader import parse_hf_spec

# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------


@dataclass
class TaskConfig:
    """Which task and how it is split (see :func:`tlm_jax.tasks.make_splits`).

    ``name``: ``ag_news`` | ``dbpedia`` | ``fewrel`` | ``synthetic`` | ``generic`` | ``tfds`` | ``hf``.
    ``--task csv:PATH`` (``tsv:``/``jsonl:``) sets ``name=generic path=PATH
    format=csv``; ``--task tfds:NAME`` sets ``name=tfds path=NAME``; ``--task
    hf:PATH[:CONFIG]`` sets ``name=hf path=PATH hf_name=CONFIG`` (a Hugging Face
    dataset: a save_to_disk folder, a folder of data files or a Hub name). For generic
    files ``text_columns``/``label_column`` name the columns (or 0-based
    indices); for TFDS they are the feature keys, for ``hf`` the dataset's columns.
    Counts of 0 mean "not set".
    """

    name: str = ""
    path: str = ""
    format: str = ""  # csv | tsv | jsonl; "" = from the suffix
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    label_column: str = "label"
    has_header: bool = True
    test_path: str = ""
    data_dir: str = ""  # "" = $TLM_DATA_DIR (built-in tasks) / TFDS default
    hf_name: str = ""  # hf: the dataset's config
    # hf: [train, test] split names, or one split divided here; [] = train + test (else
    # validation), or the only split.
    hf_splits: list[str] = field(default_factory=list)
    train_per_class: int = 0
    test_per_class: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    max_train: int = 0
    max_test: int = 0
    split_seed: int = -1  # -1 = the run's seed
    max_len: int = 0  # 0 = the pretrained run's data.max_len


@dataclass
class HeadConfig:
    """The classification head."""

    pooling: str = "cls"  # cls ([CLS] hidden state) | mean (masked mean over tokens)
    dropout: float = 0.1
    init_std: float = 0.02
    freeze_encoder: bool = False


@dataclass
class FinetuneTrainConfig:
    """Budget, evaluation and early stopping."""

    batch_size: int = 32
    epochs: float = 10.0
    steps: int = 0  # >0 overrides epochs
    warmup_ratio: float = 0.1  # warmup = ratio * steps (when optim.warmup_steps < 0)
    eval_every: int = 0  # 0 = once per epoch
    eval_batch_size: int = 256
    patience: int = 3  # evaluations without improvement before stopping; 0 = never stop
    metric: str = "accuracy"  # accuracy | macro_f1 | loss (early-stopping metric)
    log_every: int = 10
    checkpoint: bool = True  # write checkpoints/ (latest) and best/ per seed
    tensorboard: bool = False
    baseline: bool = True  # TF-IDF + logistic regression on the same splits


@dataclass
class FinetuneConfig:
    """A whole fine-tuning run (``tlm finetune``)."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # only for a twin without a run
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=5e-5, weight_decay=0.01, warmup_steps=-1, schedule="linear", clip_norm=1.0))
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)


def config_error(err: Exception, where: str) -> TLMError:
    """An OmegaConf merge error as a :class:`TLMError` naming the bad key and the nearest valid ones."""
    return merge_error(err, where, FinetuneConfig(), "fine-tuning config")


def parse_task_arg(task: str) -> dict[str, str]:
    """``--task`` -> ``task.*`` settings: a built-in name, ``csv:PATH``, ``tfds:NAME``,
    ``hf:PATH[:CONFIG]`` or a path."""
    kind, sep, rest = task.partition(":")
    if sep and kind in ("csv", "tsv", "jsonl"):
        return {"name": "generic", "path": rest, "format": kind}
    if sep and kind == "tfds":
        return {"name": "tfds", "path": rest}
    if sep and kind == "hf":
        path, config = parse_hf_spec(rest)
        return {"name": "hf", "path": path, "hf_name": config or ""}
    if sep and kind == "generic":
        return {"name": "generic", "path": rest}
    low = task.lower()
    if any(low.endswith(s) for s in (".csv", ".tsv", ".jsonl", ".csv.gz", ".tsv.gz", ".jsonl.gz")):
        return {"name": "generic", "path": task}
    return {"name": task}


def load_finetune_config(config: str | None = None, overrides: Sequence[str] = (),
                         task: str | None = None) -> FinetuneConfig:
    """Defaults -> YAML (``--config``) -> ``--task`` -> ``key=value`` overrides."""
    file_part: dict[str, Any] = load_yaml(config) if config else {}
    check_sections(file_part, FinetuneConfig(), f"config file {config}")
    cli_part = parse_overrides(overrides, "train.epochs=5")
    check_sections(OmegaConf.to_container(cli_part), FinetuneConfig(), "command-line overrides",
                   drop_null=False)
    merged = OmegaConf.structured(FinetuneConfig)
    for part, where in ((file_part, f"config file {config}"),
                        ({"task": parse_task_arg(task)} if task else {}, "--task"),
                        (cli_part, "command-line overrides")):
        try:
            merged = OmegaConf.merge(merged, part)
        except MERGE_ERRORS as e:
            raise config_error(e, where) from e
    try:  # resolves ${...} interpolations
        cfg: FinetuneConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise config_error(e, "the merged config") from e
    validate_finetune(cfg)
    return cfg


def model_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """The ``model.*`` keys a user set on the command line (they override the run's model)."""
    out: dict[str, Any] = {}
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException:
        return out
    return dict(parsed.get("model") or {}) if isinstance(parsed, dict) else out


def _finite(x: float) -> bool:
    return math.isfinite(x)


# Fine-tuning's optim.warmup_steps=-1 means "train.warmup_ratio of the steps".
_WARMUP = ("optim.warmup_steps", lambda v: v >= -1, ">= -1 (-1 = from train.warmup_ratio)")
# (key, predicate, what the value must be), as tlm_jax.config's table for pretraining.
_RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("task.train_per_class", lambda v: v >= 0, ">= 0 (0 = from task.test_fraction)"),
    ("task.test_per_class", lambda v: v >= 0, ">= 0 (0 = not set)"),
    ("task.val_fraction", lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    ("task.test_fraction", lambda v: _finite(v) and 0 < v < 1, "in (0, 1)"),
    ("task.max_train", lambda v: v >= 0, ">= 0 (0 = no cap)"),
    ("task.max_test", lambda v: v >= 0, ">= 0 (0 = no cap)"),
    ("task.split_seed", lambda v: -1 <= v < 2**32, "in [-1, 2**32) (-1 = the run's seed)"),
    ("task.max_len", lambda v: v == 0 or v >= 2, "0 (the run's data.max_len) or at least 2 tokens"),
    ("head.dropout", lambda v: _finite(v) and 0 <= v < 1, "a probability in [0, 1)"),
    ("head.init_std", lambda v: _finite(v) and v > 0, "a small positive number, e.g. 0.02"),
    ("train.batch_size", lambda v: v >= 1, "a positive number of examples"),
    ("train.eval_batch_size", lambda v: v >= 1, "a positive number of examples"),
    ("train.epochs", lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    ("train.steps", lambda v: v >= 0, ">= 0 (0 = from train.epochs)"),
    ("train.warmup_ratio", lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    ("train.eval_every", lambda v: v >= 0, ">= 0 (0 = once per epoch)"),
    ("train.patience", lambda v: v >= 0, ">= 0 (0 = never stop early)"),
    ("train.log_every", lambda v: v >= 1, "a positive number of steps"),
    ("mesh.data", lambda v: v == -1 or v >= 1, "a positive size, or -1 (the remaining devices)"),
    ("mesh.fsdp", lambda v: v == -1 or v >= 1, "a positive size, or -1 (the remaining devices)"),
    ("mesh.tensor", lambda v: v == -1 or v >= 1, "a positive size, or -1 (the remaining devices)"),
    *(_WARMUP if r[0] == _WARMUP[0] else r for r in OPTIM_RANGES),
)


def validate_finetune(cfg: FinetuneConfig) -> None:
    """Refuse settings that cannot work, with the fix (one key at a time)."""
    check_ranges(cfg, _RANGES)
    validate_model(cfg.model)  # a twin's architecture (a run's model only takes a few overrides)
    if cfg.head.pooling not in POOLINGS:
        raise TLMError(f"head.pooling={show(cfg.head.pooling)} is unknown", f"use one of {POOLINGS}")
    if cfg.train.metric not in ("accuracy", "macro_f1", "loss"):
        raise TLMError(f"train.metric={show(cfg.train.metric)} is unknown",
                       "use accuracy, macro_f1 or loss")
    if cfg.train.steps <= 0 and cfg.train.epochs <= 0:
        raise TLMError("neither train.steps nor train.epochs is positive", "set one of them")
