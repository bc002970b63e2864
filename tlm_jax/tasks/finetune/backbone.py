"""A run and a task as model inputs: the architecture and tokenizer to start from, and token ids."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from tlm_jax.config import MERGE_ERRORS, ModelConfig, read_config
from tlm_jax.data.tokenizer import encode, load_tokenizer, padded_vocab, special_tokens, tokenizer_hash
from tlm_jax.errors import TLMError
from tlm_jax.tasks import load_task
from tlm_jax.tasks.finetune.config import FinetuneConfig, TaskConfig, config_error, model_overrides

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
    except MERGE_ERRORS as e:
        raise config_error(e, "model overrides") from e
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def _run_dir_info(run: Path) -> tuple[Any, Any]:
    if not (run / "config.json").is_file():
        raise TLMError(f"{run} is not a tlm pretrain run directory (no config.json)",
                       "pass the --workdir of a finished `tlm pretrain`")
    if not (run / "tokenizer.json").is_file():
        raise TLMError(f"{run} has no tokenizer.json", "pass a complete pretraining run directory")
    return read_config(run / "config.json"), load_tokenizer(run / "tokenizer.json")


def resolve_backbone(pretrained: str | os.PathLike | None, *, tokenizer_from: str | None,
                     cfg: FinetuneConfig, overrides: Sequence[str] = ()) -> Backbone:
    """Architecture + tokenizer for a pretrained run, or for its random-init twin."""
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


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def encode_texts(tok: Any, special: Any, texts: Sequence[str], max_len: int
                 ) -> tuple[list[np.ndarray], int]:
    """``[CLS] ids[:max_len-2] [SEP]`` per text; returns the rows and how many were truncated."""
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
    """The task's :class:`~tlm_jax.tasks.ClassificationData` for ``seed``."""
    if not tc.name:
        raise TLMError("no task given",
                       "pass --task ag_news|dbpedia|fewrel|synthetic|csv:PATH|tfds:NAME|hf:PATH")
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
    if tc.name == "hf":
        if not tc.path:
            raise TLMError("a Hugging Face task needs a dataset", "pass --task hf:PATH[:CONFIG]")
        opts.update(path=tc.path, config=tc.hf_name or None, splits=list(tc.hf_splits) or None,
                    text_columns=list(tc.text_columns), label_column=tc.label_column)
        return load_task("hf", **opts)
    return load_task(tc.name, data_dir, **opts)
