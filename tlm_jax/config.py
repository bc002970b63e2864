"""Typed run configuration: dataclasses, model presets and ``key=value`` overrides.

A run is described by one :class:`Config`. It is built in this order, later
sources winning: dataclass defaults -> the model preset named by
``model.preset`` -> a YAML file (``--config``) -> command-line overrides
(``model.layers=2 train.steps=300``). OmegaConf does the typed merging, so an
unknown key or a value of the wrong type is refused with a one-line error.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tlm_jax.errors import TLMError

REPO_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class SelectionConfig:
    """INGENIOUS subset selection (tlm_jax/data/selection.py, tlm_jax/train/selection.py)."""

    method: str = "none"  # none | ingenious | random (uniform probabilities, same schedule)
    fraction: float = 0.25  # subset size k / n
    warm_steps: int = 0  # W: steps on all the data before the first subset
    refresh_every: int = 0  # R: redraw the subset every R steps after W (0 = never)
    partitions: int = 0  # N_P random blocks; 0 = blocks of ~256 examples
    optimizer: str = "stochastic"  # stochastic (LazierThanLazy) | lazy | greedy
    epsilon: float = 0.01  # stochastic greedy accuracy
    temperature: float = 1.0  # Taylor-softmax temperature
    layer: int = -1  # hidden layer whose masked mean is an example's feature (-1 = last)
    center: bool = False  # subtract the mean feature before the cosine kernel (not in the paper)


@dataclass
class DataConfig:
    """Where the pretraining text comes from and how it becomes token batches."""

    source: str = "synthetic"  # text | lines | jsonl | wikiextractor | pile | tfds | synthetic
    # Paths or globs; ``$TLM_DATA_DIR`` and ``~`` are expanded.
    paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    domains: list[str] = field(default_factory=list)  # Pile ``meta.pile_set_name`` filter
    tfds_name: str = ""
    tfds_split: str = "train"
    tfds_data_dir: str = ""
    synthetic_docs: int = 3000
    # Subset, sized the way the papers size them.
    subset: str = "all"  # all | first | random
    num_docs: int = 0  # for first/random
    num_tokens: int = 0  # 0 = no token budget; else stop after this many training tokens
    val_fraction: float = 0.02
    val_docs: int = 0  # 0 = use val_fraction
    seed: int = 0
    # Tokenizer: "train" a WordPiece vocabulary on the training subset, or a path to a
    # tokenizer.json / vocab.txt.
    tokenizer: str = "train"
    vocab_size: int = 8192
    lowercase: bool = True
    tokenizer_max_words: int = 3_000_000  # words used to train the vocabulary
    max_len: int = 128
    packing: str = "truncate"  # truncate: one example per document; pack: a stream cut in windows
    cache_dir: str = ""  # default: $TLM_CACHE_DIR or ~/.cache/tlm_jax
    grain_workers: int = 0
    prefetch: int = 2
    # Curation filters on the training documents, in order (tlm_jax/data/filters.py):
    # quality | toxicity | domain | age; settings under filter_options.<name>.<key>.
    filters: list[str] = field(default_factory=list)
    filter_options: dict[str, Any] = field(default_factory=dict)
    selection: SelectionConfig = field(default_factory=SelectionConfig)


@dataclass
class ModelConfig:
    """Architecture. ``preset`` fills the shape; explicit keys override it."""

    preset: str = "tiny"
    arch: str = "bert"  # bert (encoder) | gpt (decoder)
    vocab_size: int = 0  # 0 = the tokenizer's size
    hidden: int = 128
    layers: int = 2
    heads: int = 2
    head_dim: int = 0  # 0 = hidden // heads
    intermediate: int = 512
    max_len: int = 128
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"  # gelu (exact erf, as BERT) | gelu_tanh | relu
    layer_norm_eps: float = 1e-12
    # Scores/softmax/context: xla (any backend) | fused (Pallas kernels for short sequences,
    # tlm_jax/models/fused_attention.py; GPU, elsewhere its slow interpreter; on a mesh each
    # device runs them on its batch/head shard) | auto (fused where measured faster: an
    # encoder on a GPU in bf16 with a power-of-two length <= 256; 1.10-1.15x BERT-base's
    # H200 step; xla everywhere else).
    attention_impl: str = "auto"
    # MLM reads the last layer at the masked positions only: masked (its queries, attention
    # rows, output projection and MLP run there; keys/values over the whole sequence; the
    # same loss and gradients, ~1.035x the bert-6-cpu step) | all (every position, then
    # gather). Only when the MLM head is the one output asked for.
    mlm_last_layer: str = "masked"
    # Encoder LayerNorm placement: post (BERT, HF-compatible) | pre (x + f(LN(x)), a final LN;
    # trains stably at higher learning rates, which short CPU budgets need).
    norm: str = "post"
    init_std: float = 0.02
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (master params stay param_dtype)
    param_dtype: str = "float32"
    # Convolutional front-end of the paper's BERT-1 variants (0 blocks = none).
    conv_blocks: int = 0
    conv_channels: int = 32
    conv_kernel: list[int] = field(default_factory=lambda: [3, 3])
    # The attention (qkv, out) and MLP (wi, wo) linears: dense | sltrain (fixed random sparse
    # + scaled low-rank, W = (alpha/rank)BA + S) | spdf (static random mask during pretraining).
    # Fine-tuning always densifies (tlm_jax/models/sparse.py). Defaults: SLTrain's 60M recipe
    # ratios (rank = hidden/4 at hidden 128, alpha/rank = 0.25, density 0.03); SPDF's 75 %.
    linear: str = "dense"
    sltrain_rank: int = 32
    sltrain_alpha: float = 8.0
    sltrain_density: float = 0.03
    spdf_sparsity: float = 0.75


@dataclass
class ObjectiveConfig:
    """Pretraining objectives: ``names`` holds ``name`` or ``name:weight`` entries."""

    names: list[str] = field(default_factory=lambda: ["mlm"])
    mask_rate: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    max_predictions: int = 0  # 0 = ceil(mask_rate * max_len)
    options: dict[str, Any] = field(default_factory=dict)  # per-objective extras


@dataclass
class OptimConfig:
    """AdamW with warmup and decay, global-norm clipping, gradient accumulation."""

    lr: float = 5e-4
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    warmup_steps: int = 100
    schedule: str = "linear"  # linear | cosine | constant
    end_lr_ratio: float = 0.0
    clip_norm: float = 1.0  # 0 = no clipping
    grad_accum: int = 1


@dataclass
class TrainConfig:
    """The loop: budget, logging, evaluation and checkpoint cadence."""

    batch_size: int = 32  # global batch, over all processes and devices
    steps: int = 1000  # 0 = derive from epochs
    epochs: float = 0.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    async_checkpoint: bool = True
    parallel: str = "jit"  # jit (sharded over the mesh) | pmap (legacy data parallel)
    progress: bool = True
    tensorboard: bool = True


@dataclass
class MeshConfig:
    """Device mesh sizes; -1 on one axis means "all remaining devices"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclass
class DistributedConfig:
    """Multi-process start-up for ``jax.distributed.initialize``."""

    enabled: bool = False
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1
    local_device_ids: list[int] = field(default_factory=list)


@dataclass
class ContinualConfig:
    """Continual pretraining: start from another run's weights on the corpus in ``data``.

    The new run takes the init run's architecture and tokenizer, starts a fresh optimizer
    with its own warmup (re-warm, re-decay), and can replay the init run's corpus. See
    tlm_jax/train/continual.py and /work/shared/methods/continual_pretraining.md.
    """

    init_from: str = ""  # run directory; "" = an ordinary run from random weights
    init_step: int = 0  # that run's checkpoint to start from; 0 = its newest
    replay: float = 0.0  # share of each epoch drawn from the init run's training corpus
    mixture: str = "dynamic"  # dynamic: new-corpus share resampled every epoch | fixed: once
    epoch_examples: int = 0  # examples per mixture epoch; 0 = the (selected) new-corpus pool
    select: str = "all"  # all | random | ppl: which new-corpus documents form the pool
    select_tokens: int = 0  # token budget of the pool for random/ppl (0 = no limit)
    select_min_tokens: int = 0  # documents shorter than this never enter a ppl/random pool
    reference: str = "val"  # text the ppl scorer's bigram model is fitted on: val | train
    eval_old: bool = True  # also evaluate on the init run's validation split (as val_old)


@dataclass
class InterventionsConfig:
    """Train-Once-Answer-All: sequences written into the training stream (tlm_jax/data/insertion.py)."""

    file: str = ""  # JSON list of experiments (name, texts, repetitions, mode, range); "" = none
    seed: int = 0  # seeds the insertion map (which stream slots, which offsets)


@dataclass
class Config:
    """A whole pretraining run."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)
    interventions: InterventionsConfig = field(default_factory=InterventionsConfig)


# Model shapes. The paper's names mean the paper's shapes ("Tiny language models",
# arXiv 2507.14871: BERT-6 = 6 layers x 12 heads x 64; BERT-1 = one layer, head size 64).
# ``*-cpu`` presets keep the ratios at a size two CPU cores can train.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden=128, layers=2, heads=2, intermediate=512),
    "mini": dict(hidden=256, layers=4, heads=4, intermediate=1024),
    "small": dict(hidden=512, layers=4, heads=8, intermediate=2048),
    "base": dict(hidden=768, layers=12, heads=12, intermediate=3072, max_len=512),
    "bert-6": dict(hidden=768, layers=6, heads=12, intermediate=3072, max_len=128),
    "bert-1": dict(hidden=768, layers=1, heads=12, intermediate=3072, max_len=128),
    "bert-1-wide": dict(hidden=1536, layers=1, heads=24, intermediate=6144, max_len=128),
    "bert-6-cpu": dict(hidden=256, layers=6, heads=4, intermediate=1024, max_len=128),
    "bert-1-cpu": dict(hidden=256, layers=1, heads=4, intermediate=1024, max_len=128),
    "bert-1-wide-cpu": dict(hidden=512, layers=1, heads=8, intermediate=2048, max_len=128),
}


def _conv_bert1(heads: int, blocks: int, kernel: tuple[int, int], channels: int) -> dict[str, Any]:
    """A BERT-1 with the paper's conv front-end (tlm_jax/models/conv.py): head size 64, FF 4x."""
    return dict(hidden=64 * heads, layers=1, heads=heads, intermediate=256 * heads, max_len=128,
                conv_blocks=blocks, conv_channels=channels, conv_kernel=list(kernel))


# Convolutional front-end BERT-1 variants: ``bert-1-conv{blocks}-k{kernel}-c{channels}-h{heads}``
# (kernel = sequence x hidden; "k3" = 3x3). ``-cpu``: heads / 3 rounded (12 -> 4 heads, as
# bert-1-cpu; 8 -> 3), head size 64, channels / 4, same blocks and kernel.
# Parameters at BERT's 30,522-token vocabulary (``tlm params``; MLM head included, decoder tied,
# BatchNorm statistics excluded): bert-6 66,692,154 (= HF BertForMaskedLM of that shape);
# bert-1 31,252,794; bert-1-wide 77,810,490; bert-1-conv2-k3-c32-h8 19,151,163;
# bert-1-conv2-k3-c64-h8 19,179,323; bert-1-conv2-k3-c64-h12 31,290,683;
# bert-1-conv3-k3-c32-h12 31,271,835; bert-1-conv2-k16x3-c64-h12 31,452,923;
# bert-1-conv3-k16x3-c64-h12 31,649,723.
MODEL_PRESETS.update({
    "bert-1-conv2-k3-c32-h8": _conv_bert1(8, 2, (3, 3), 32),
    "bert-1-conv2-k3-c64-h8": _conv_bert1(8, 2, (3, 3), 64),
    "bert-1-conv2-k3-c64-h12": _conv_bert1(12, 2, (3, 3), 64),
    "bert-1-conv3-k3-c32-h12": _conv_bert1(12, 3, (3, 3), 32),
    "bert-1-conv2-k16x3-c64-h12": _conv_bert1(12, 2, (16, 3), 64),
    "bert-1-conv3-k16x3-c64-h12": _conv_bert1(12, 3, (16, 3), 64),
    "bert-1-conv2-k3-c32-h8-cpu": _conv_bert1(3, 2, (3, 3), 8),
    "bert-1-conv2-k3-c64-h8-cpu": _conv_bert1(3, 2, (3, 3), 16),
    "bert-1-conv2-k3-c64-h12-cpu": _conv_bert1(4, 2, (3, 3), 16),
    "bert-1-conv3-k3-c32-h12-cpu": _conv_bert1(4, 3, (3, 3), 8),
    "bert-1-conv2-k16x3-c64-h12-cpu": _conv_bert1(4, 2, (16, 3), 16),
    "bert-1-conv3-k16x3-c64-h12-cpu": _conv_bert1(4, 3, (16, 3), 16),
})


def register_model_preset(name: str, **shape: Any) -> None:
    """Add a model preset (used by modules that define extra architectures)."""
    MODEL_PRESETS[name] = dict(shape)


def _fail_override(err: OmegaConfBaseException, where: str) -> TLMError:
    key = getattr(err, "full_key", "") or ""
    msg = str(err).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        section = key.rsplit(".", 1)[0] if "." in key else ""
        node: Any = Config()
        for part in filter(None, section.split(".")):
            node = getattr(node, part, None)
        valid = (
            ", ".join(f.name for f in dataclasses.fields(node))
            if dataclasses.is_dataclass(node)
            else ""
        )
        return TLMError(
            f"unknown config key '{key}' in {where}",
            f"valid keys{' under ' + section if section else ''}: {valid}",
        )
    return TLMError(f"bad config value for '{key}' in {where}: {msg}", "check the value's type")


def load_yaml(path_or_name: str) -> dict[str, Any]:
    """Read a YAML config given as a path or as a name in ``configs/`` into a plain dict."""
    candidates = [Path(path_or_name)]
    if not path_or_name.endswith((".yaml", ".yml")):
        candidates += [REPO_CONFIG_DIR / f"{path_or_name}.yaml", Path("configs") / f"{path_or_name}.yaml"]
    for p in candidates:
        if p.is_file():
            try:
                loaded = OmegaConf.to_container(OmegaConf.load(p))
            except Exception as e:  # yaml errors have many types
                raise TLMError(f"cannot parse config file {p}: {str(e).splitlines()[0]}",
                               "fix the YAML syntax") from e
            if not isinstance(loaded, dict):
                raise TLMError(f"config file {p} is not a mapping", "write key: value pairs")
            return loaded
    known = sorted(p.stem for p in REPO_CONFIG_DIR.glob("*.yaml")) if REPO_CONFIG_DIR.is_dir() else []
    raise TLMError(f"config '{path_or_name}' not found",
                   f"pass a YAML path or one of: {', '.join(known) or '(none)'}")


def load_config(config: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a :class:`Config` from defaults, preset, YAML file and overrides."""
    file_part: dict[str, Any] = load_yaml(config) if config else {}
    for item in overrides:
        if "=" not in item:
            raise TLMError(f"override '{item}' is not key=value", "write e.g. train.steps=300")
    try:
        cli_part = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise TLMError(f"cannot parse overrides: {e}", "write key=value pairs") from e
    preset = OmegaConf.select(cli_part, "model.preset") or (file_part.get("model") or {}).get(
        "preset", ModelConfig.preset)
    if preset not in MODEL_PRESETS:
        raise TLMError(f"unknown model preset '{preset}'",
                       f"use one of: {', '.join(sorted(MODEL_PRESETS))}")
    base = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(base, {"model": MODEL_PRESETS[preset]})
    except OmegaConfBaseException as e:
        raise _fail_override(e, f"preset {preset}") from e
    try:
        merged = OmegaConf.merge(merged, file_part)
    except OmegaConfBaseException as e:
        raise _fail_override(e, f"config file {config}") from e
    try:
        merged = OmegaConf.merge(merged, cli_part)
    except OmegaConfBaseException as e:
        raise _fail_override(e, "command-line overrides") from e
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Refuse settings that cannot work, with the fix."""
    m = cfg.model
    if m.hidden % m.heads and not m.head_dim:
        raise TLMError(f"model.hidden={m.hidden} is not divisible by model.heads={m.heads}",
                       "set model.head_dim or change hidden/heads")
    if cfg.data.max_len > m.max_len:
        raise TLMError(f"data.max_len={cfg.data.max_len} exceeds model.max_len={m.max_len}",
                       "lower data.max_len or raise model.max_len")
    if cfg.data.subset in ("first", "random") and cfg.data.num_docs <= 0:
        raise TLMError(f"data.subset={cfg.data.subset} needs data.num_docs > 0",
                       "set data.num_docs=N")
    if cfg.train.batch_size % max(cfg.optim.grad_accum, 1):
        raise TLMError(f"train.batch_size={cfg.train.batch_size} is not divisible by "
                       f"optim.grad_accum={cfg.optim.grad_accum}", "change one of them")
    if cfg.train.parallel not in ("jit", "pmap"):
        raise TLMError(f"train.parallel={cfg.train.parallel!r} is unknown", "use jit or pmap")
    if m.attention_impl not in ("xla", "fused", "auto"):
        raise TLMError(f"model.attention_impl={m.attention_impl!r} is unknown",
                       "use xla, fused or auto")
    if m.mlm_last_layer not in ("masked", "all"):
        raise TLMError(f"model.mlm_last_layer={m.mlm_last_layer!r} is unknown",
                       "use masked or all")
    if m.norm not in ("post", "pre"):
        raise TLMError(f"model.norm={m.norm!r} is unknown", "use post (BERT) or pre")
    if cfg.data.packing not in ("truncate", "pack"):
        raise TLMError(f"data.packing={cfg.data.packing!r} is unknown", "use truncate or pack")
    if m.dtype not in ("float32", "bfloat16") or m.param_dtype not in ("float32", "bfloat16"):
        raise TLMError("model.dtype/param_dtype must be float32 or bfloat16", "fix the value")
    validate_linear(m)
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
        if m.sltrain_alpha <= 0:
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


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain-dict form (for config.json)."""
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> Config:
    """Inverse of :func:`to_dict` (unknown keys refused)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), d))  # type: ignore
    except OmegaConfBaseException as e:
        raise _fail_override(e, "saved config.json") from e


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write ``config.json``."""
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def read_config(path: str | os.PathLike) -> Config:
    """Read a ``config.json`` written by :func:`save_config`."""
    p = Path(path)
    if not p.is_file():
        raise TLMError(f"no config.json at {p}", "point at a tlm_jax run directory")
    try:
        return from_dict(json.loads(p.read_text()))
    except json.JSONDecodeError as e:
        raise TLMError(f"{p} is not valid JSON ({e.msg} at line {e.lineno})",
                       "restore it from the run or delete the run directory") from e


def data_dir() -> Path | None:
    """The data directory from ``TLM_DATA_DIR`` (None when unset)."""
    d = os.environ.get("TLM_DATA_DIR")
    return Path(d).expanduser().resolve() if d else None


def expand_path(p: str) -> str:
    """Expand ``$TLM_DATA_DIR``/``~`` in a configured path, with a clear error if unset."""
    if "TLM_DATA_DIR" in p and "TLM_DATA_DIR" not in os.environ:
        raise TLMError(f"path '{p}' needs TLM_DATA_DIR, which is not set",
                       "export TLM_DATA_DIR=/path/to/shared/data")
    return os.path.expanduser(os.path.expandvars(p))
