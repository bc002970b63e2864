"""Fine-tuning a pretrained run (or its random-init twin) on a classification task.

``finetune(cfg, pretrained, workdir, seeds)`` is what ``tlm finetune`` runs:

1. **Model and tokenizer.** ``pretrained`` is a ``tlm pretrain`` run directory:
   its ``config.json`` gives the architecture, its ``tokenizer.json`` the
   vocabulary, its newest checkpoint the encoder weights (the pretraining heads
   are dropped). ``pretrained=None`` (``--pretrained none``) is the *twin*: the
   same architecture with random weights. The twin still needs a vocabulary, so
   it takes ``tokenizer_from``: a run directory (architecture *and* tokenizer of
   that run -- the exact twin of fine-tuning that run) or a ``tokenizer.json`` /
   ``vocab.txt`` file (architecture from the ``model.*`` settings).
2. **Data.** The task (:mod:`tlm_jax.tasks.datasets`) is split per seed
   (``task.split_seed=-1``: the split seed is the run seed, so seeds vary the
   data sample too; pretrained and twin runs with the same seed see the same
   split). Texts are tokenized with the run's tokenizer, wrapped in
   ``[CLS] .. [SEP]``, truncated to the run's ``data.max_len`` (or
   ``task.max_len``) and padded to the longest example (multiple of 8).
3. **Training.** The classification loss is an
   :class:`~tlm_jax.objectives.base.Objective` (:class:`ClassificationObjective`),
   so the step is the pretraining step (:func:`~tlm_jax.train.step.make_train_step`)
   jitted over the same mesh with the same state shardings; the model carries
   ``model_state`` (BatchNorm statistics) through. AdamW with warmup and linear
   decay; ``head.freeze_encoder`` zeroes encoder updates (and stops its gradient).
4. **Early stopping** on the validation split (``train.metric``, checked every
   ``train.eval_every`` steps, default once per epoch; ``train.patience`` checks
   without improvement end the run) and the best checkpoint is evaluated on test.
5. **Outputs**: ``OUT/seed_<s>/`` holds ``results.json``, ``metrics.jsonl``,
   ``test_logits.npy``, ``checkpoints/`` (latest, for resuming) and ``best/``;
   ``OUT/results.json`` aggregates the seeds (mean ± 95 % CI via
   :func:`~tlm_jax.eval.metrics.mean_ci95`) next to the TF-IDF + logistic
   regression baseline on the same splits. A seed whose ``results.json`` exists
   is skipped, an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tlm_jax.config import MeshConfig, ModelConfig, OptimConfig, _load_yaml, read_config
from tlm_jax.errors import TLMError
from tlm_jax.objectives.base import Batch, LossTerms, Objective, cross_entropy_terms

# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------


@dataclass
class TaskConfig:
    """Which task and how it is split (see :func:`tlm_jax.tasks.datasets.make_splits`).

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


def _fail(err: OmegaConfBaseException, where: str) -> TLMError:
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
    file_part: dict[str, Any] = _load_yaml(config) if config else {}
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
            raise _fail(e, where) from e
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
    from tlm_jax.models.classifier import POOLINGS  # noqa: PLC0415

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


# ----------------------------------------------------------------------------
# The classification objective
# ----------------------------------------------------------------------------


@dataclass
class ClassificationObjective(Objective):
    """Cross-entropy of ``outputs["class_logits"]`` against ``batch["labels"]``.

    ``transform`` passes the token ids through (attention mask = not [PAD]) and
    takes ``labels`` and ``weights`` from the batch: a row of weight 0 (padding
    of the last batch) contributes nothing, and ``weights`` is the normaliser, so
    the loss is the mean over real examples.
    """

    name: str = "classify"
    heads: tuple[str, ...] = ("classify",)

    def transform(self, batch: Batch, rng: Any) -> tuple[Batch, Batch]:
        del rng
        ids = batch["input_ids"]
        inputs = {"input_ids": ids, "attention_mask": (ids != self.special.pad).astype(np.int32)}
        weights = batch.get("weights")
        if weights is None:
            import jax.numpy as jnp  # noqa: PLC0415

            weights = jnp.ones(ids.shape[:1], jnp.float32)
        return inputs, {"labels": batch["labels"], "weights": weights}

    def loss(self, outputs: dict[str, Any], targets: Batch) -> LossTerms:
        return cross_entropy_terms(outputs["class_logits"], targets["labels"], targets["weights"],
                                   self.name)


# ----------------------------------------------------------------------------
# Pretrained run, tokenizer and model
# ----------------------------------------------------------------------------


@dataclass
class Backbone:
    """What the fine-tune starts from: architecture, tokenizer, and (optionally) weights."""

    model_cfg: ModelConfig
    tokenizer: Any
    special: Any
    max_len: int
    run_dir: Path | None  # the pretrained run (None for a twin)
    tokenizer_source: str
    info: dict[str, Any]


_SHAPE_KEYS = ("arch", "vocab_size", "hidden", "layers", "heads", "head_dim", "intermediate",
               "max_len", "type_vocab_size", "conv_blocks", "conv_channels", "conv_kernel",
               "preset", "activation")


def _apply_model_overrides(base: ModelConfig, over: dict[str, Any], *, allow_shape: bool,
                           where: str) -> ModelConfig:
    if not over:
        return base
    if not allow_shape:
        bad = sorted(k for k in over if k in _SHAPE_KEYS)
        if bad:
            raise TLMError(f"model.{bad[0]} cannot be changed when fine-tuning {where}",
                           "only model.dropout/attention_dropout/dtype may be overridden")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(base), over)
    except OmegaConfBaseException as e:
        raise _fail(e, "model overrides") from e
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def _run_dir_info(run: Path) -> tuple[Any, Any]:
    from tlm_jax.data.tokenizer import load_tokenizer  # noqa: PLC0415

    if not (run / "config.json").is_file():
        raise TLMError(f"{run} is not a tlm pretrain run directory (no config.json)",
                       "pass the --workdir of a finished `tlm pretrain`")
    if not (run / "tokenizer.json").is_file():
        raise TLMError(f"{run} has no tokenizer.json", "pass a complete pretraining run directory")
    return read_config(run / "config.json"), load_tokenizer(run / "tokenizer.json")


def resolve_backbone(pretrained: str | os.PathLike | None, *, tokenizer_from: str | None,
                     cfg: FinetuneConfig, overrides: Sequence[str] = ()) -> Backbone:
    """Architecture + tokenizer for a pretrained run, or for its random-init twin."""
    from tlm_jax.data.tokenizer import load_tokenizer, special_tokens, tokenizer_hash  # noqa: PLC0415

    over = model_overrides(overrides)
    if pretrained is not None:
        run = Path(pretrained)
        pcfg, tok = _run_dir_info(run)
        mcfg = _apply_model_overrides(pcfg.model, over, allow_shape=False, where=f"run {run}")
        max_len, source, run_dir = pcfg.data.max_len, str(run / "tokenizer.json"), run
        if tokenizer_from is not None:
            raise TLMError("--tokenizer-from is only for --pretrained none",
                           "drop it: a pretrained run always uses its own tokenizer")
    else:
        if not tokenizer_from:
            raise TLMError("--pretrained none needs a vocabulary",
                           "pass --tokenizer-from RUN_DIR (the twin of that run: same "
                           "architecture and tokenizer) or --tokenizer-from tokenizer.json")
        src = Path(tokenizer_from)
        run_dir = None
        if src.is_dir() and (src / "config.json").is_file():
            pcfg, tok = _run_dir_info(src)
            mcfg = _apply_model_overrides(pcfg.model, over, allow_shape=True, where="a twin")
            max_len, source = pcfg.data.max_len, str(src / "tokenizer.json")
        else:
            tok = load_tokenizer(src)
            mcfg = dataclasses.replace(cfg.model)
            max_len, source = mcfg.max_len, str(src)
    # Fine-tuning is dense: SLTrain / SPDF runs are densified when their weights are loaded
    # (load_pretrained_variables), and their twins are dense models of the same shape.
    if over.get("linear", "dense") != "dense":
        raise TLMError(f"model.linear={over['linear']} cannot be fine-tuned (fine-tuning is dense)",
                       "drop model.linear: sltrain/spdf runs are densified when loaded")
    sparse_linear = mcfg.linear if mcfg.linear != "dense" else None
    mcfg = dataclasses.replace(mcfg, linear="dense")
    special = special_tokens(tok)
    if mcfg.vocab_size <= 0:
        from tlm_jax.train.loop import padded_vocab  # noqa: PLC0415

        mcfg.vocab_size = padded_vocab(special.vocab_size)
    if mcfg.vocab_size < special.vocab_size:
        raise TLMError(f"model.vocab_size={mcfg.vocab_size} is smaller than the tokenizer's "
                       f"{special.vocab_size} tokens (vocabulary mismatch)",
                       "use the run's own tokenizer")
    if cfg.task.max_len > 0:
        max_len = cfg.task.max_len
    if max_len > mcfg.max_len:
        raise TLMError(f"task.max_len={max_len} exceeds the model's max_len={mcfg.max_len}",
                       f"use task.max_len<={mcfg.max_len}")
    info = {"run": str(run_dir.resolve()) if run_dir else None,
            "init": "pretrained" if run_dir else "random",
            "tokenizer": source, "tokenizer_hash": tokenizer_hash(tok),
            "model": dataclasses.asdict(mcfg), "max_len": max_len}
    if tokenizer_from and run_dir is None and Path(tokenizer_from).is_dir():
        info["twin_of"] = str(Path(tokenizer_from).resolve())
    if sparse_linear:
        info["densified_from"] = sparse_linear
    return Backbone(mcfg, tok, special, max_len, run_dir, source, info)


def load_pretrained_variables(run: Path, mesh: Any, *, log: Callable[[str], None] = print
                              ) -> tuple[dict[str, Any], dict[str, Any], int]:
    """``(params, model_state, step)`` of the newest restorable checkpoint of ``run``.

    SLTrain / SPDF projections come back densified (:func:`tlm_jax.models.sparse.densify_variables`).
    """
    import jax  # noqa: PLC0415

    from tlm_jax.data.tokenizer import load_tokenizer, special_tokens  # noqa: PLC0415
    from tlm_jax.models import build_model  # noqa: PLC0415
    from tlm_jax.objectives import build_objectives  # noqa: PLC0415
    from tlm_jax.train.checkpoint import Checkpointer  # noqa: PLC0415
    from tlm_jax.train.optimizer import make_optimizer  # noqa: PLC0415
    from tlm_jax.train.state import state_shardings  # noqa: PLC0415

    pcfg = read_config(run / "config.json")
    special = special_tokens(load_tokenizer(run / "tokenizer.json"))
    objectives = build_objectives(pcfg.objective, special, pcfg.data.max_len)
    token_classes = max((o.token_classes for o, _ in objectives), default=0)
    pmodel = build_model(pcfg.model, token_classes=token_classes)
    tx, _ = make_optimizer(pcfg.optim, max(pcfg.train.steps, 1))
    abstract, shardings = state_shardings(pmodel, tx, mesh, pcfg.data.max_len)
    if not (run / "checkpoints").is_dir():
        raise TLMError(f"{run} has no checkpoints/", "pretrain it first (tlm pretrain)")
    ckpt = Checkpointer(run / "checkpoints", every=1, keep=1_000_000, async_save=False, log=log)
    try:
        restored = ckpt.restore(abstract, shardings)
    finally:
        ckpt.manager.close()
    if restored is None:
        raise TLMError(f"no restorable checkpoint in {run / 'checkpoints'}",
                       "finish (or resume) the pretraining run first")
    step, state, _, _ = restored
    # Host copies: the fine-tuning step donates its state, so device buffers shared with
    # the first seed's state would be gone for the next seed.
    params, model_state = jax.device_get((state.params, state.model_state))
    if pcfg.model.linear != "dense":
        from tlm_jax.models.sparse import densify_variables  # noqa: PLC0415

        params, model_state = densify_variables(pcfg.model, params, model_state)
        log(f"densified the {pcfg.model.linear} projections of {run} (fine-tuning is dense)")
    return params, model_state, int(step)


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def encode_texts(tok: Any, special: Any, texts: Sequence[str], max_len: int
                 ) -> tuple[list[np.ndarray], int]:
    """``[CLS] ids[:max_len-2] [SEP]`` per text; returns the rows and how many were truncated."""
    from tlm_jax.data.tokenizer import encode  # noqa: PLC0415

    body = max_len - 2
    rows, cut = [], 0
    for ids in encode(tok, list(texts)):
        if len(ids) > body:
            cut += 1
        rows.append(np.concatenate([[special.cls], ids[:body], [special.sep]]).astype(np.int32))
    return rows, cut


def pad_rows(rows: Sequence[np.ndarray], length: int, pad: int) -> np.ndarray:
    """Stack rows into ``[N, length]`` padded with ``pad``."""
    out = np.full((len(rows), length), pad, np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def seq_length(rows_by_split: Sequence[Sequence[np.ndarray]], max_len: int, multiple: int = 8
               ) -> int:
    """The padded length: the longest row, rounded up to ``multiple``, at most ``max_len``."""
    longest = max((len(r) for rows in rows_by_split for r in rows), default=2)
    return int(min(max_len, multiple * math.ceil(longest / multiple)))


def load_task_data(tc: TaskConfig, seed: int) -> Any:
    """The task's :class:`~tlm_jax.tasks.datasets.ClassificationData` for ``seed``."""
    from tlm_jax.tasks.datasets import load_task  # noqa: PLC0415

    if not tc.name:
        raise TLMError("no task given", "pass --task ag_news|dbpedia|fewrel|synthetic|csv:PATH|tfds:NAME")
    opts: dict[str, Any] = {
        "seed": seed, "test_fraction": tc.test_fraction, "val_fraction": tc.val_fraction,
        "train_per_class": tc.train_per_class or None, "test_per_class": tc.test_per_class or None,
        "max_train": tc.max_train or None, "max_test": tc.max_test or None}
    data_dir = tc.data_dir or None
    if tc.name == "generic":
        if not tc.path:
            raise TLMError("a generic task needs a file", "pass --task csv:PATH (or tsv:/jsonl:)")
        cols: list[str | int] = [int(c) if str(c).isdigit() and not tc.has_header else c
                                 for c in tc.text_columns]
        label: str | int = (int(tc.label_column) if str(tc.label_column).isdigit()
                            and not tc.has_header else tc.label_column)
        opts.update(path=tc.path, text_columns=cols, label_column=label,
                    format=tc.format or None, has_header=tc.has_header,
                    test_path=tc.test_path or None)
        return load_task("generic", **opts)
    if tc.name == "tfds":
        if not tc.path:
            raise TLMError("a TFDS task needs a dataset name", "pass --task tfds:NAME")
        opts.update(dataset=tc.path, text_keys=list(tc.text_columns), label_key=tc.label_column)
        return load_task("tfds", data_dir, **opts)
    return load_task(tc.name, data_dir, **opts)


# ----------------------------------------------------------------------------
# Optimizer and compiled functions
# ----------------------------------------------------------------------------


def make_finetune_optimizer(cfg: OptimConfig, total_steps: int, *, warmup_ratio: float = 0.1,
                            freeze_encoder: bool = False) -> tuple[Any, Any]:
    """AdamW + warmup/linear decay (``optim.warmup_steps<0``: ``warmup_ratio * steps``).

    With ``freeze_encoder`` an ``optax.multi_transform`` sends every parameter
    under ``encoder`` to ``set_to_zero``: its update is exactly 0 (no weight
    decay either), so it keeps its value bit for bit.
    """
    import optax  # noqa: PLC0415

    from tlm_jax.train.optimizer import make_optimizer  # noqa: PLC0415

    ocfg = dataclasses.replace(cfg)
    if ocfg.warmup_steps < 0:
        ocfg.warmup_steps = int(round(warmup_ratio * total_steps))
    tx, schedule = make_optimizer(ocfg, total_steps)
    if freeze_encoder:
        def labels(params: Any) -> Any:
            return {k: _label_tree(v, "frozen" if k == "encoder" else "train")
                    for k, v in params.items()}

        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule


def _label_tree(tree: Any, label: str) -> Any:
    import jax  # noqa: PLC0415

    return jax.tree.map(lambda _: label, tree)


@dataclass
class Compiled:
    """The model and its jitted functions for one (architecture, classes, length, budget)."""

    model: Any
    objective: ClassificationObjective
    tx: Any
    schedule: Any
    mesh: Any
    shardings: Any
    length: int
    train_step: Callable
    predict: Callable
    init: Callable


_COMPILED: dict[str, Compiled] = {}


def _compile(backbone: Backbone, cfg: FinetuneConfig, num_classes: int, length: int,
             total_steps: int) -> Compiled:
    import flax.linen as nn  # noqa: PLC0415
    import jax  # noqa: PLC0415

    from tlm_jax import sharding as shd  # noqa: PLC0415
    from tlm_jax.models import apply_model  # noqa: PLC0415
    from tlm_jax.models.batching import default_chunk_rows, map_in_chunks  # noqa: PLC0415
    from tlm_jax.models.classifier import SequenceClassifier  # noqa: PLC0415
    from tlm_jax.objectives.base import ObjectiveConfig  # noqa: PLC0415
    from tlm_jax.train.state import _boxed_state, state_shardings  # noqa: PLC0415
    from tlm_jax.train.step import make_train_step  # noqa: PLC0415

    key = json.dumps({"model": dataclasses.asdict(backbone.model_cfg),
                      "head": dataclasses.asdict(cfg.head), "optim": dataclasses.asdict(cfg.optim),
                      "warmup_ratio": cfg.train.warmup_ratio, "classes": num_classes,
                      "length": length, "steps": total_steps, "pad": backbone.special.pad,
                      "mesh": dataclasses.asdict(cfg.mesh), "batch": cfg.train.batch_size},
                     sort_keys=True, default=str)
    if key in _COMPILED:
        return _COMPILED[key]
    model = SequenceClassifier(backbone.model_cfg, num_classes, pooling=cfg.head.pooling,
                               dropout=cfg.head.dropout, init_std=cfg.head.init_std,
                               freeze_encoder=cfg.head.freeze_encoder)
    objective = ClassificationObjective(cfg=ObjectiveConfig(), special=backbone.special,
                                        max_len=length)
    tx, schedule = make_finetune_optimizer(cfg.optim, total_steps,
                                           warmup_ratio=cfg.train.warmup_ratio,
                                           freeze_encoder=cfg.head.freeze_encoder)
    mesh = shd.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        _, shardings = state_shardings(model, tx, mesh, length)
        init = jax.jit(lambda r: shd.unbox(_boxed_state(model, tx, r, length)),
                       out_shardings=shardings)
        step = make_train_step(model, [(objective, 1.0)], tx, schedule)
        train_step = jax.jit(step, in_shardings=(shardings, None),
                             out_shardings=(shardings, None), donate_argnums=0)

        def _logits(params: Any, model_state: Any, ids: Any) -> Any:
            inputs = {"input_ids": ids, "attention_mask": (ids != backbone.special.pad)}
            out, _ = apply_model(model, {"params": params, **model_state}, inputs, train=False,
                                 heads=("classify",))
            return out["class_logits"]

        # On a CPU an eval batch runs in cache-sized row chunks (models/batching.py), each
        # device through its own shard of the batch.
        rows, shards = default_chunk_rows(length), mesh.shape["data"] * mesh.shape["fsdp"]

        def _predict(params: Any, model_state: Any, ids: Any) -> Any:
            return map_in_chunks(lambda x: _logits(params, model_state, x), rows, shards)(ids)

        predict = jax.jit(_predict, in_shardings=(shardings.params, shardings.model_state, None))
    compiled = Compiled(model, objective, tx, schedule, mesh, shardings, length, train_step,
                        predict, init)
    _COMPILED[key] = compiled
    return compiled


# ----------------------------------------------------------------------------
# One seed
# ----------------------------------------------------------------------------


def _graft_pretrained(state: Any, enc_params: Any, enc_state: Any, shardings: Any) -> Any:
    """Replace ``params['encoder']`` (and ``model_state[*]['encoder']``) by pretrained values."""
    import jax  # noqa: PLC0415

    target = state.params["encoder"]
    missing = sorted(set(target) - set(enc_params))
    if missing:
        raise TLMError(f"the pretrained checkpoint lacks encoder parameters {missing}",
                       "fine-tune a run of the same architecture")
    picked = {k: enc_params[k] for k in target}
    t_shapes = jax.tree.map(lambda x: tuple(x.shape), target)
    p_shapes = jax.tree.map(lambda x: tuple(x.shape), picked)
    if jax.tree.structure(t_shapes) != jax.tree.structure(p_shapes) or \
            jax.tree.leaves(t_shapes) != jax.tree.leaves(p_shapes):
        raise TLMError("the pretrained encoder's parameter shapes differ from the fine-tuning model",
                       "do not override the model shape when fine-tuning a run")
    new_enc = jax.device_put(picked, shardings.params["encoder"])
    params = dict(state.params)
    params["encoder"] = new_enc
    model_state = dict(state.model_state)
    for col, tree in model_state.items():
        if isinstance(tree, dict) and "encoder" in tree and col in (enc_state or {}):
            sub = dict(tree)
            sub["encoder"] = jax.device_put(
                {k: enc_state[col][k] for k in tree["encoder"]},
                shardings.model_state[col]["encoder"])
            model_state[col] = sub
    return state.replace(params=params, model_state=model_state)


def _batches_for_epoch(n: int, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([seed, 7919, epoch]).permutation(n)
    return [order[i:i + batch] for i in range(0, n, batch)]


def _train_batch(ids: np.ndarray, labels: np.ndarray, idx: np.ndarray, batch: int
                 ) -> dict[str, np.ndarray]:
    k = len(idx)
    take = np.concatenate([idx, np.full(batch - k, idx[0], idx.dtype)]) if k < batch else idx
    w = np.zeros(batch, np.float32)
    w[:k] = 1.0
    return {"input_ids": ids[take], "labels": labels[take].astype(np.int32), "weights": w,
            "index": np.arange(batch, dtype=np.int32)}


def _global(v: np.ndarray, sharding: Any) -> Any:
    """A global array from a host array every process holds in full (single- or multi-host)."""
    import jax  # noqa: PLC0415

    return jax.make_array_from_callback(v.shape, sharding, lambda idx: v[idx])


def _replicated(x: Any, mesh: Any) -> Any:
    """``x`` gathered onto every device (so each process can read all of it)."""
    import jax  # noqa: PLC0415

    from tlm_jax import sharding as shd  # noqa: PLC0415

    if jax.process_count() == 1:
        return x
    return jax.jit(lambda a: a, out_shardings=shd.replicated(mesh))(x)


def predict_logits(comp: Compiled, params: Any, model_state: Any, ids: np.ndarray,
                   batch: int) -> np.ndarray:
    """Logits ``[N, classes]`` for padded ids ``[N, L]`` (batches padded to a fixed size)."""
    import jax  # noqa: PLC0415

    from tlm_jax import sharding as shd  # noqa: PLC0415

    out = []
    dp = comp.mesh.devices.shape[0] * comp.mesh.devices.shape[1]
    # Small splits are not padded up to a whole eval batch (one compile per distinct size).
    batch = min(batch, 8 * math.ceil(max(len(ids), 1) / 8))
    batch = max(dp, dp * math.ceil(batch / dp))
    for s in range(0, len(ids), batch):
        chunk = ids[s:s + batch]
        k = len(chunk)
        if k < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - k, 0)])
        x = _global(chunk, shd.batch_sharding(comp.mesh, 2))
        logits = comp.predict(params, model_state, x)
        out.append(np.asarray(jax.device_get(_replicated(logits, comp.mesh)))[:k])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _score(logits: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, Any]:
    from tlm_jax.eval.metrics import classification_report  # noqa: PLC0415

    rep = classification_report(labels, logits.argmax(-1), names)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    rep["loss"] = float(-logp[np.arange(len(labels)), labels].mean())
    return rep


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric == "loss" else new > old


def finetune_seed(cfg: FinetuneConfig, backbone: Backbone, data: Any, seed: int, workdir: Path,
                  *, pretrained_vars: tuple[Any, Any, int] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune one seed on ``data``; writes ``workdir/results.json`` and returns it."""
    import flax.linen as nn  # noqa: PLC0415
    import jax  # noqa: PLC0415

    from tlm_jax import sharding as shd  # noqa: PLC0415
    from tlm_jax.models import count_params  # noqa: PLC0415
    from tlm_jax.train.checkpoint import Checkpointer  # noqa: PLC0415
    from tlm_jax.train.metrics import MetricsLogger  # noqa: PLC0415

    t0 = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    tok, special = backbone.tokenizer, backbone.special
    enc = {s: encode_texts(tok, special, getattr(data, f"{s}_texts"), backbone.max_len)
           for s in ("train", "val", "test")}
    length = seq_length([enc[s][0] for s in enc], backbone.max_len)
    ids = {s: pad_rows(enc[s][0], length, special.pad) for s in enc}
    labels = {s: np.asarray(getattr(data, f"{s}_labels"), np.int32) for s in enc}
    n_train = len(ids["train"])
    if n_train == 0:
        raise TLMError(f"task {data.name} has no training examples", "check the split options")
    tcfg = cfg.train
    steps_per_epoch = math.ceil(n_train / tcfg.batch_size)
    total = tcfg.steps if tcfg.steps > 0 else max(1, math.ceil(tcfg.epochs * steps_per_epoch))
    eval_every = tcfg.eval_every or steps_per_epoch
    has_val = len(ids["val"]) > 0
    comp = _compile(backbone, cfg, data.num_classes, length, total)
    dp = comp.mesh.devices.shape[0] * comp.mesh.devices.shape[1]
    if tcfg.batch_size % dp:
        raise TLMError(f"train.batch_size={tcfg.batch_size} is not divisible by data*fsdp={dp}",
                       f"use a multiple of {dp}")

    with jax.set_mesh(comp.mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        state = comp.init(jax.random.PRNGKey(seed))
        if pretrained_vars is not None:
            state = _graft_pretrained(state, pretrained_vars[0], pretrained_vars[1],
                                      comp.shardings)
        n_params = count_params(state.params)
        meta_es: dict[str, Any] = {"best_value": None, "best_step": 0, "bad_evals": 0,
                                   "history": [], "stopped_early": False}
        ckpt = best_ckpt = None
        start = 0
        best_params = best_ms = None
        if tcfg.checkpoint:
            ckpt = Checkpointer(workdir / "checkpoints", every=1, keep=1, async_save=False, log=log)
            best_ckpt = Checkpointer(workdir / "best", every=1, keep=1, async_save=False, log=log)
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
            restored = ckpt.restore(abstract, comp.shardings)
            if restored is not None:
                start, state, _, meta = restored
                meta_es.update(meta.get("early_stopping") or {})
                rb = best_ckpt.restore(abstract, comp.shardings)
                if rb is not None:
                    best_params, best_ms = jax.device_get((rb[1].params, rb[1].model_state))
                log(f"seed {seed}: resumed at step {start}")
        logger = MetricsLogger(workdir, resume_step=start, tensorboard=tcfg.tensorboard,
                               enabled=jax.process_index() == 0)

        def evaluate(params: Any, ms: Any, split: str) -> tuple[dict[str, Any], np.ndarray]:
            logits = predict_logits(comp, params, ms, ids[split], tcfg.eval_batch_size)
            return _score(logits, labels[split], data.label_names), logits

        step = start
        stop = meta_es.get("stopped_early", False) or start >= total
        t_train = time.perf_counter()
        while not stop:
            epoch = step // steps_per_epoch
            batches = _batches_for_epoch(n_train, tcfg.batch_size, seed, epoch)
            for bi in range(step % steps_per_epoch, steps_per_epoch):
                b = _train_batch(ids["train"], labels["train"], batches[bi], tcfg.batch_size)
                gb = {k: _global(v, shd.batch_sharding(comp.mesh, v.ndim)) for k, v in b.items()}
                state, metrics = comp.train_step(state, gb)
                step += 1
                if step % tcfg.log_every == 0 or step == total:
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    m.pop("tokens", None)
                    m["epoch"] = step / steps_per_epoch
                    logger.log(step, m)
                if step % eval_every == 0 or step == total:
                    if has_val:
                        rep, _ = evaluate(state.params, state.model_state, "val")
                        value = rep["loss"] if tcfg.metric == "loss" else rep[tcfg.metric]
                        logger.log(step, {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"],
                                          "loss": rep["loss"]}, prefix="val")
                        meta_es["history"].append({"step": step, "accuracy": rep["accuracy"],
                                                   "macro_f1": rep["macro_f1"],
                                                   "loss": rep["loss"]})
                        if _better(tcfg.metric, value, meta_es["best_value"]):
                            meta_es.update(best_value=value, best_step=step, bad_evals=0)
                            best_params, best_ms = jax.device_get((state.params, state.model_state))
                            if best_ckpt is not None:
                                best_ckpt.save(step, state, {"step": step},
                                               {"kind": "best", "value": value}, force=True)
                        else:
                            meta_es["bad_evals"] += 1
                            if tcfg.patience and meta_es["bad_evals"] >= tcfg.patience:
                                meta_es["stopped_early"] = True
                    if ckpt is not None:
                        ckpt.save(step, state, {"step": step},
                                  {"early_stopping": meta_es, "seed": seed}, force=True)
                if step >= total or meta_es["stopped_early"]:
                    stop = True
                    break
        train_seconds = time.perf_counter() - t_train
        if best_params is None:  # no validation split: the final weights
            best_params, best_ms = state.params, state.model_state
            meta_es["best_step"] = step
        test_rep, test_logits = evaluate(best_params, best_ms, "test")
        if ckpt is not None:
            ckpt.close()
            best_ckpt.close()  # type: ignore[union-attr]
        logger.log(step, {"accuracy": test_rep["accuracy"], "macro_f1": test_rep["macro_f1"]},
                   prefix="test")
        logger.close()
    np.save(workdir / "test_logits.npy", test_logits.astype(np.float32))
    np.save(workdir / "test_labels.npy", labels["test"])
    result = {
        "task": data.name,
        "seed": seed,
        **{k: test_rep[k] for k in ("accuracy", "macro_f1", "per_class_accuracy",
                                    "per_class_f1", "support", "label_names",
                                    "confusion_matrix", "loss")},
        "split_sizes": data.sizes(),
        "split_seed": data.provenance.get("seed"),
        "sequence_length": length,
        "truncated": {s: enc[s][1] for s in enc},
        "pretrained": backbone.info | ({"step": pretrained_vars[2]} if pretrained_vars else {}),
        "parameters": n_params,
        "steps": step,
        "total_steps": total,
        "steps_per_epoch": steps_per_epoch,
        "best_step": meta_es["best_step"],
        "best_val": meta_es["best_value"],
        "early_stopping_metric": tcfg.metric if has_val else None,
        "stopped_early": meta_es["stopped_early"],
        "val_history": meta_es["history"],
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
        "provenance": data.provenance,
    }
    _write_json(workdir / "results.json", result)
    log(f"seed {seed}: test accuracy {result['accuracy']:.4f}, macro-F1 "
        f"{result['macro_f1']:.4f} (best step {result['best_step']}/{step}, "
        f"{result['seconds']:.0f}s)")
    return result


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# ----------------------------------------------------------------------------
# Several seeds + baseline
# ----------------------------------------------------------------------------


def _split_seed(tc: TaskConfig, seed: int) -> int:
    return seed if tc.split_seed < 0 else tc.split_seed


def _fingerprint(cfg: FinetuneConfig, backbone: Backbone) -> str:
    """What a finished seed's result depends on: the config, the initialisation (and the
    pretrained run's newest checkpoint step), the tokenizer and the architecture -- not
    paths, so a moved run still resumes."""
    key = {"config": dataclasses.asdict(cfg), "init": backbone.info["init"],
           "tokenizer_hash": backbone.info["tokenizer_hash"], "model": backbone.info["model"],
           "max_len": backbone.info["max_len"]}
    ckpts = backbone.run_dir / "checkpoints" if backbone.run_dir is not None else None
    if ckpts is not None and ckpts.is_dir():
        key["checkpoint_step"] = max((int(p.name) for p in ckpts.iterdir() if p.name.isdigit()),
                                     default=None)
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finetune(cfg: FinetuneConfig, pretrained: str | os.PathLike | None, workdir: str | os.PathLike,
             seeds: Sequence[int] = (0,), *, tokenizer_from: str | None = None,
             overrides: Sequence[str] = (), log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune ``pretrained`` (``None`` = random-init twin) for each seed; see the module doc."""
    import flax.linen as nn  # noqa: PLC0415
    import jax  # noqa: PLC0415

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise TLMError("no seeds given", "pass --seeds 0,1,2")
    t0 = time.perf_counter()
    backbone = resolve_backbone(pretrained, tokenizer_from=tokenizer_from, cfg=cfg,
                                overrides=overrides)
    fingerprint = _fingerprint(cfg, backbone)
    prev = workdir / "finetune_config.json"
    if prev.is_file():
        old = json.loads(prev.read_text()).get("fingerprint")
        finished = [s for s in seeds if (workdir / f"seed_{s}" / "results.json").is_file()]
        if old is not None and old != fingerprint and finished:
            raise TLMError(
                f"{workdir} holds fine-tuning results (seeds {finished}) of another config or "
                "backbone; reusing them would mix results",
                "pass a new output directory, or delete this one to start over")
    _write_json(prev, {"config": dataclasses.asdict(cfg), "pretrained": backbone.info,
                       "seeds": seeds, "fingerprint": fingerprint})
    pre_vars = None
    per_seed: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    for seed in seeds:
        sdir = workdir / f"seed_{seed}"
        data = None
        if (sdir / "results.json").is_file():
            res = json.loads((sdir / "results.json").read_text())
            log(f"seed {seed}: finished earlier (accuracy {res['accuracy']:.4f}), skipped")
        else:
            data = load_task_data(cfg.task, _split_seed(cfg.task, seed))
            if backbone.run_dir is not None and pre_vars is None:
                from tlm_jax import sharding as shd  # noqa: PLC0415

                mesh = shd.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
                with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
                    pre_vars = load_pretrained_variables(backbone.run_dir, mesh, log=log)
                log(f"loaded pretrained encoder from {backbone.run_dir} (step {pre_vars[2]})")
            res = finetune_seed(cfg, backbone, data, seed, sdir, pretrained_vars=pre_vars, log=log)
        per_seed.append(res)
        if cfg.train.baseline:
            bpath = sdir / "baseline.json"
            if bpath.is_file():
                base = json.loads(bpath.read_text())
            else:
                from tlm_jax.eval.baselines import tfidf_logreg_baseline  # noqa: PLC0415

                if data is None:
                    data = load_task_data(cfg.task, _split_seed(cfg.task, seed))
                base = tfidf_logreg_baseline(data, seed=seed)
                _write_json(bpath, base)
            baselines.append(base)
    summary = summarize_seeds(per_seed, baselines)
    first = per_seed[0]
    results = {
        "task": first["task"],
        "pretrained": first["pretrained"],
        "seeds": seeds,
        "seed": seeds[0] if len(seeds) == 1 else seeds,
        **summary,
        "split_sizes": first["split_sizes"],
        "split_sizes_per_seed": {str(r["seed"]): r["split_sizes"] for r in per_seed},
        "label_names": first["label_names"],
        "parameters": first["parameters"],
        "config": dataclasses.asdict(cfg),
        "seconds": round(time.perf_counter() - t0, 1),
        "per_seed": [{k: r[k] for k in ("seed", "accuracy", "macro_f1", "per_class_accuracy",
                                         "confusion_matrix", "split_sizes", "split_seed",
                                         "best_step", "steps", "stopped_early", "seconds")}
                     for r in per_seed],
        "provenance": first["provenance"],
    }
    _write_json(workdir / "results.json", results)
    acc, base = results["accuracy"], results.get("baseline", {}).get("accuracy")
    log(f"{results['task']} ({backbone.info['init']}): accuracy {acc['mean']:.4f} ± "
        f"{acc['ci95']:.4f} over {len(seeds)} seed(s)"
        + (f"; TF-IDF+LR {base['mean']:.4f} ± {base['ci95']:.4f}" if base else ""))
    return results


def summarize_seeds(per_seed: Sequence[dict[str, Any]],
                    baselines: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Mean ± 95 % CI of accuracy and macro-F1 over seeds, mean per-class accuracy, summed
    confusion matrix, and the same for the baseline."""
    from tlm_jax.eval.metrics import mean_ci95  # noqa: PLC0415

    out: dict[str, Any] = {
        "accuracy": mean_ci95([r["accuracy"] for r in per_seed]),
        "macro_f1": mean_ci95([r["macro_f1"] for r in per_seed]),
    }
    names = per_seed[0]["label_names"]
    out["per_class_accuracy"] = {
        n: (float(np.mean(vals)) if (vals := [r["per_class_accuracy"][n] for r in per_seed
                                              if r["per_class_accuracy"].get(n) is not None])
            else None) for n in names}
    out["confusion_matrix"] = np.sum([np.asarray(r["confusion_matrix"]) for r in per_seed],
                                     axis=0).tolist()
    out["confusion_matrix_note"] = "summed over seeds; rows true, columns predicted"
    if baselines:
        out["baseline"] = {
            "method": baselines[0].get("method", "tfidf_logreg"),
            "accuracy": mean_ci95([b["accuracy"] for b in baselines]),
            "macro_f1": mean_ci95([b["macro_f1"] for b in baselines]),
            "params": baselines[0].get("params"),
        }
    return out


def paired_gap(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], key: str = "accuracy"
               ) -> dict[str, Any]:
    """Mean ± 95 % CI of ``a - b`` over seeds present in both (paired by seed)."""
    from tlm_jax.eval.metrics import mean_ci95  # noqa: PLC0415

    bs = {r["seed"]: r[key] for r in b}
    diffs = [r[key] - bs[r["seed"]] for r in a if r["seed"] in bs]
    if not diffs:
        raise ValueError("no common seeds")
    return mean_ci95(diffs)
