"""Settings that cannot work, refused before any work starts: ranges, choices, combinations."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

from tlm_jax.config.messages import show
from tlm_jax.config.schema import Config, ContinualConfig, ModelConfig
from tlm_jax.errors import TLMError


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# (key, predicate, what the value must be): checked before any work starts.
_RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("train.batch_size", lambda v: 1 <= v < 2**31, "a positive number of sequences below 2**31"),
    ("train.steps", lambda v: v >= 0, ">= 0 (0 = derive from train.epochs)"),
    ("train.epochs", lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    ("train.log_every", lambda v: v >= 1, "a positive number of steps"),
    ("train.eval_every", lambda v: v >= 0, ">= 0 (0 = only at the start and end)"),
    ("train.eval_batches", lambda v: v >= 0, ">= 0"),
    ("train.checkpoint_every", lambda v: v >= 1, "a positive number of steps"),
    ("train.keep_checkpoints", lambda v: v >= 1, "at least 1"),
    ("train.max_skipped", lambda v: v >= 1, "at least 1"),
    ("optim.lr", lambda v: _finite(v) and v > 0, "a finite, positive learning rate, e.g. 5e-4"),
    ("optim.weight_decay", lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    ("optim.b1", lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    ("optim.b2", lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    ("optim.eps", lambda v: _finite(v) and v > 0, "a small positive number, e.g. 1e-6"),
    ("optim.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("optim.end_lr_ratio", lambda v: _finite(v) and 0 <= v <= 1, "in [0, 1]"),
    ("optim.clip_norm", lambda v: _finite(v) and v >= 0, ">= 0 (0 = no clipping)"),
    ("optim.grad_accum", lambda v: v >= 1, "a positive number of microbatches"),
    ("data.max_len", lambda v: 2 <= v < 2**31, "at least 2 tokens (and below 2**31)"),
    ("data.vocab_size", lambda v: 1 <= v < 2**31, "a positive vocabulary size below 2**31 (int32 ids)"),
    ("data.val_fraction", lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    ("data.num_docs", lambda v: v >= 0, ">= 0"),
    ("data.num_tokens", lambda v: v >= 0, ">= 0 (0 = no budget)"),
    ("data.prefetch", lambda v: v >= 0, ">= 0"),
    ("data.grain_workers", lambda v: v >= 0, ">= 0"),
    ("model.hidden", lambda v: 1 <= v < 2**31, "a positive size below 2**31"),
    ("model.layers", lambda v: v >= 1, "a positive number of layers"),
    ("model.heads", lambda v: v >= 1, "a positive number of heads"),
    ("model.head_dim", lambda v: v >= 0, ">= 0 (0 = hidden // heads)"),
    ("model.intermediate", lambda v: 1 <= v < 2**31, "a positive size below 2**31"),
    ("model.max_len", lambda v: 2 <= v < 2**31, "at least 2 positions (and below 2**31)"),
    ("model.vocab_size", lambda v: 0 <= v < 2**31, ">= 0 and below 2**31 (0 = the tokenizer's, padded)"),
    ("model.dropout", lambda v: _finite(v) and 0 <= v < 1, "a probability in [0, 1)"),
    ("model.attention_dropout", lambda v: _finite(v) and 0 <= v < 1, "a probability in [0, 1)"),
    ("model.layer_norm_eps", lambda v: _finite(v) and v > 0, "a small positive number"),
    ("model.init_std", lambda v: _finite(v) and v > 0, "a small positive number, e.g. 0.02"),
    ("objective.mask_rate", lambda v: _finite(v) and 0 < v < 1, "a probability in (0, 1)"),
    ("objective.mask_token_prob", lambda v: _finite(v) and 0 <= v <= 1, "a probability in [0, 1]"),
    ("objective.random_token_prob", lambda v: _finite(v) and 0 <= v <= 1,
     "a probability in [0, 1]"),
    ("objective.max_predictions", lambda v: v >= 0, ">= 0 (0 = from mask_rate)"),
    ("data.seed", lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    ("train.seed", lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    ("interventions.seed", lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    ("data.synthetic_docs", lambda v: v >= 1, "a positive number of documents"),
    ("data.val_docs", lambda v: v >= 0, ">= 0 (0 = from data.val_fraction)"),
    ("data.tokenizer_max_words", lambda v: v >= 1, "a positive number of words"),
    ("data.selection.fraction", lambda v: _finite(v) and 0 < v <= 1, "in (0, 1]"),
    ("data.selection.epsilon", lambda v: _finite(v) and 0 < v < 1, "in (0, 1)"),
    ("data.selection.temperature", lambda v: _finite(v) and v > 0, "a finite, positive number"),
    ("data.selection.warm_steps", lambda v: v >= 0, ">= 0"),
    ("data.selection.refresh_every", lambda v: v >= 0, ">= 0 (0 = never)"),
    ("data.selection.partitions", lambda v: v >= 0, ">= 0 (0 = blocks of ~256 examples)"),
    ("model.type_vocab_size", lambda v: v >= 1, "at least 1"),
    ("model.conv_blocks", lambda v: v >= 0, ">= 0 (0 = no conv front-end)"),
    ("model.conv_channels", lambda v: v >= 1, "a positive number of channels"),
    ("model.conv_kernel", lambda v: len(v) == 2 and all(k >= 1 for k in v),
     "two positive sizes (sequence x hidden), e.g. [3, 3]"),
    ("mesh.data", lambda v: v == -1 or v >= 1, "a positive size, or -1 (the remaining devices)"),
    ("mesh.fsdp", lambda v: v == -1 or v >= 1, "a positive size, or -1 (the remaining devices)"),
    ("mesh.tensor", lambda v: v == -1 or v >= 1, "a positive size, or -1 (the remaining devices)"),
    ("continual.init_step", lambda v: v >= 0, ">= 0 (0 = the newest checkpoint)"),
    ("continual.epoch_examples", lambda v: v >= 0, ">= 0"),
    ("continual.select_tokens", lambda v: v >= 0, ">= 0 (0 = no limit)"),
    ("continual.select_min_tokens", lambda v: v >= 0, ">= 0"),
    ("distributed.num_processes", lambda v: v >= 0, ">= 0"),
    ("distributed.process_id", lambda v: v >= -1, ">= -1 (-1 = from the environment)"),
)
# The ranges fine-tuning shares (tlm_jax/tasks/finetune/config.py).
MODEL_RANGES = tuple(r for r in _RANGES if r[0].startswith("model."))
OPTIM_RANGES = tuple(r for r in _RANGES if r[0].startswith("optim."))

# (key, allowed values) of the string settings. Some lists mirror names other layers own
# (data.sources.KINDS, data.subset.MODES, models.ARCHITECTURES, ...): tests/test_reliability.py
# checks that they agree.
CHOICES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data.source", ("text", "lines", "jsonl", "wikiextractor", "pile", "tfds", "hf", "synthetic")),
    ("data.subset", ("all", "first", "random")),
    ("data.selection.method", ("none", "ingenious", "random")),
    ("data.selection.optimizer", ("stochastic", "lazy", "greedy")),
    ("model.arch", ("bert", "gpt")),
    ("model.activation", ("gelu", "gelu_tanh", "relu")),
    ("optim.schedule", ("linear", "cosine", "constant")),
    ("train.wandb_mode", ("", "online", "offline", "disabled")),
    ("train.nonfinite", ("stop", "skip")),
    ("train.parallel", ("jit", "pmap")),
    ("data.packing", ("truncate", "pack")),
    ("model.attention_impl", ("xla", "fused", "auto")),
    ("model.mlm_last_layer", ("masked", "all")),
    ("model.norm", ("post", "pre")),
    ("model.dtype", ("float32", "bfloat16")),
    ("model.param_dtype", ("float32", "bfloat16")),
)
MODEL_CHOICES = tuple(c for c in CHOICES if c[0].startswith("model."))


def get_key(obj: Any, key: str) -> Any:
    """The value at dotted ``key`` (``"train.steps"``) of a config object."""
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _ints_fit(obj: Any, prefix: str = "") -> None:
    """Refuse an integer no array index can hold (``model.hidden=2**70``): numpy/JAX overflow."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            _ints_fit(v, f"{prefix}{f.name}.")
        elif isinstance(v, int) and not isinstance(v, bool) and not -2**63 <= v < 2**63:
            raise TLMError(f"{prefix}{f.name}={show(v)} is out of range", "use a value below 2**63")


def check_ranges(obj: Any, table: Iterable[tuple[str, Callable[[Any], bool], str]],
                 choices: Iterable[tuple[str, tuple[str, ...]]] = ()) -> None:
    """Refuse the first value of ``obj`` (a config dataclass) outside its range or its choices."""
    _ints_fit(obj)
    for key, ok, want in table:
        value = get_key(obj, key)
        if not ok(value):
            raise TLMError(f"{key}={show(value)} is invalid: it must be {want}",
                           f"set {key} to a valid value")
    for key, allowed in choices:
        value = get_key(obj, key)
        if value not in allowed:
            raise TLMError(f"{key}={show(value)} is unknown",
                           f"use one of: {', '.join(a or repr(a) for a in allowed)}")


def validate_ranges(cfg: Config) -> None:
    """Refuse values outside their range (counts, sizes, rates, probabilities) or choices, one key
    at a time."""
    check_ranges(cfg, _RANGES, CHOICES)


def validate_model(m: ModelConfig) -> None:
    """Refuse ``model.*`` settings that cannot work (pretraining, and a fine-tuning twin's model)."""
    check_ranges(Config(model=m), MODEL_RANGES, MODEL_CHOICES)
    if m.hidden % m.heads and not m.head_dim:
        raise TLMError(f"model.hidden={m.hidden} is not divisible by model.heads={m.heads}",
                       "set model.head_dim or change hidden/heads")
    validate_linear(m)


def validate(cfg: Config) -> None:
    """Refuse settings that cannot work, with the fix."""
    validate_ranges(cfg)
    validate_model(cfg.model)
    if cfg.data.max_len > cfg.model.max_len:
        raise TLMError(f"data.max_len={cfg.data.max_len} exceeds model.max_len={cfg.model.max_len}",
                       "lower data.max_len or raise model.max_len")
    if cfg.data.subset in ("first", "random") and cfg.data.num_docs <= 0:
        raise TLMError(f"data.subset={cfg.data.subset} needs data.num_docs > 0",
                       "set data.num_docs=N")
    if cfg.train.batch_size % max(cfg.optim.grad_accum, 1):
        raise TLMError(f"train.batch_size={cfg.train.batch_size} is not divisible by "
                       f"optim.grad_accum={cfg.optim.grad_accum}", "change one of them")
    if cfg.objective.mask_token_prob + cfg.objective.random_token_prob > 1:
        raise TLMError("objective.mask_token_prob + objective.random_token_prob exceeds 1",
                       "lower one of them (BERT: 0.8 and 0.1)")
    validate_continual(cfg.continual)


LINEAR_KINDS = ("dense", "sltrain", "spdf")


def validate_linear(m: ModelConfig) -> None:
    """Refuse ``model.linear`` settings that cannot work (only the chosen kind's keys)."""
    if m.linear not in LINEAR_KINDS:
        raise TLMError(f"model.linear={m.linear!r} is unknown", f"use one of {', '.join(LINEAR_KINDS)}")
    if m.linear == "sltrain":
        if not 1 <= m.sltrain_rank < m.hidden:
            raise TLMError(f"model.sltrain_rank={m.sltrain_rank} is outside [1, hidden={m.hidden})",
                           "use a rank below the hidden size, e.g. hidden/4")
        if not 0.0 < m.sltrain_density < 1.0:
            raise TLMError(f"model.sltrain_density={m.sltrain_density} is outside (0, 1)",
                           "use e.g. 0.03 (the paper's)")
        if not (_finite(m.sltrain_alpha) and m.sltrain_alpha > 0):
            raise TLMError(f"model.sltrain_alpha={m.sltrain_alpha} is not positive",
                           "use e.g. rank/4")
    if m.linear == "spdf" and not 0.0 <= m.spdf_sparsity < 1.0:
        raise TLMError(f"model.spdf_sparsity={m.spdf_sparsity} is outside [0, 1)",
                       "use e.g. 0.5 or 0.75")


def validate_continual(c: ContinualConfig) -> None:
    """Refuse ``continual.*`` settings that cannot work."""
    if not 0.0 <= c.replay < 1.0:
        raise TLMError(f"continual.replay={c.replay} is outside [0, 1)",
                       "use the share of old-corpus examples, e.g. 0.1")
    if c.mixture not in ("dynamic", "fixed"):
        raise TLMError(f"continual.mixture={c.mixture!r} is unknown", "use dynamic or fixed")
    if c.select not in ("all", "random", "ppl"):
        raise TLMError(f"continual.select={c.select!r} is unknown", "use all, random or ppl")
    if c.reference not in ("val", "train"):
        raise TLMError(f"continual.reference={c.reference!r} is unknown", "use val or train")
    if (c.replay or c.select != "all" or c.init_step) and not c.init_from:
        raise TLMError("continual.replay/select/init_step need continual.init_from",
                       "set continual.init_from=RUN_DIR (the run to continue from)")
