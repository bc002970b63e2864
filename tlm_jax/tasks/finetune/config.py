"""The ``tlm finetune`` settings: task, head, budget; YAML + ``--task`` + ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tlm_jax.config import MeshConfig, ModelConfig, OptimConfig, load_yaml
from tlm_jax.errors import TLMError
from tlm_jax.models.classifier import POOLINGS

# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------


@dataclass
class TaskConfig:
    """Which task and how it is split (see :func:`tlm_jax.tasks.make_splits`).

    ``name``: ``ag_news`` | ``dbpedia`` | ``fewrel`` | ``synthetic`` | ``generic`` | ``tfds``.
    ``--task csv:PATH`` (``tsv:``/``jsonl:``) sets ``name=generic path=PATH
    format=csv``; ``--task tfds:NAME`` sets ``name=tfds path=NAME``. For generic
    files ``text_columns``/``label_column`` name the columns (or 0-based
    indices); for TFDS they are the feature keys. Counts of 0 mean "not set".
    """

    name: str = ""
    path: str = ""
    format: str = ""  # csv | tsv | jsonl; "" = from the suffix
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    label_column: str = "label"
    has_header: bool = True
    test_path: str = ""
    data_dir: str = ""  # "" = $TLM_DATA_DIR (built-in tasks) / TFDS default
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


def config_error(err: OmegaConfBaseException, where: str) -> TLMError:
    """An OmegaConf merge error as a :class:`TLMError` naming the bad key and the valid ones."""
    key = getattr(err, "full_key", "") or ""
    msg = str(err).splitlines()[0]
    if "not in struct" in msg or ("Key '" in msg and "not" in msg):
        section = key.rsplit(".", 1)[0] if "." in key else ""
        node: Any = FinetuneConfig()
        for part in filter(None, section.split(".")):
            node = getattr(node, part, None)
        valid = ", ".join(f.name for f in dataclasses.fields(node)) if dataclasses.is_dataclass(
            node) else ""
        return TLMError(f"unknown fine-tuning config key '{key}' in {where}",
                        f"valid keys{' under ' + section if section else ''}: {valid}")
    return TLMError(f"bad fine-tuning config value for '{key}' in {where}: {msg}",
                    "check the value's type")


def parse_task_arg(task: str) -> dict[str, str]:
    """``--task`` -> ``task.*`` settings: a built-in name, ``csv:PATH``, ``tfds:NAME`` or a path."""
    kind, sep, rest = task.partition(":")
    if sep and kind in ("csv", "tsv", "jsonl"):
        return {"name": "generic", "path": rest, "format": kind}
    if sep and kind == "tfds":
        return {"name": "tfds", "path": rest}
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
    for item in overrides:
        if "=" not in item:
            raise TLMError(f"override '{item}' is not key=value", "write e.g. train.epochs=5")
    try:
        cli_part = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise TLMError(f"cannot parse overrides: {e}", "write key=value pairs") from e
    merged = OmegaConf.structured(FinetuneConfig)
    for part, where in ((file_part, f"config file {config}"),
                        ({"task": parse_task_arg(task)} if task else {}, "--task"),
                        (cli_part, "command-line overrides")):
        try:
            merged = OmegaConf.merge(merged, part)
        except OmegaConfBaseException as e:
            raise config_error(e, where) from e
    cfg: FinetuneConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
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


def validate_finetune(cfg: FinetuneConfig) -> None:
    """Refuse settings that cannot work, with the fix."""
    if cfg.head.pooling not in POOLINGS:
        raise TLMError(f"head.pooling={cfg.head.pooling!r} is unknown", f"use one of {POOLINGS}")
    if cfg.train.metric not in ("accuracy", "macro_f1", "loss"):
        raise TLMError(f"train.metric={cfg.train.metric!r} is unknown",
                       "use accuracy, macro_f1 or loss")
    if cfg.train.batch_size < 1 or cfg.train.eval_batch_size < 1:
        raise TLMError("train.batch_size and train.eval_batch_size must be >= 1", "fix them")
    if cfg.train.steps <= 0 and cfg.train.epochs <= 0:
        raise TLMError("neither train.steps nor train.epochs is positive", "set one of them")
    if not 0.0 <= cfg.train.warmup_ratio < 1.0:
        raise TLMError(f"train.warmup_ratio={cfg.train.warmup_ratio} is outside [0, 1)",
                       "use e.g. 0.1")
