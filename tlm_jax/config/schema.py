"""The run configuration's typed sections (dataclasses) and their defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_CONFIG_DIR = Path(__file__).resolve().parent.parent.parent / "configs"


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

    source: str = "synthetic"  # text | lines | jsonl | wikiextractor | pile | tfds | hf | synthetic
    # Paths or globs; ``$TLM_DATA_DIR`` and ``~`` are expanded.
    paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    domains: list[str] = field(default_factory=list)  # Pile ``meta.pile_set_name`` filter
    tfds_name: str = ""
    tfds_split: str = "train"
    tfds_data_dir: str = ""
    # source=hf (the `hf` extra): a folder written by save_to_disk, a folder of data files or a
    # Hub name; its config; its split; stream it through load_dataset instead of downloading it
    # whole (a save_to_disk folder is memory-mapped, never streamed). Text in text_field.
    hf_path: str = ""
    hf_name: str = ""
    hf_split: str = "train"
    hf_streaming: bool = False
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
    # Weights & Biases (the optional `wandb` extra): the same scalars as TensorBoard, the config,
    # and a run id kept in the run directory so a resumed run continues its wandb run.
    wandb: bool = False
    wandb_project: str = "tlm_jax"
    wandb_name: str = ""  # "" = the run directory's name
    wandb_tags: list[str] = field(default_factory=list)
    wandb_mode: str = ""  # online | offline | disabled; "" = wandb's default (WANDB_MODE)
    # A step whose loss or gradient norm is not finite: stop (exit status 3, no checkpoint of it)
    # or skip its update (counted in metrics.jsonl; still stops after max_skipped in a row).
    nonfinite: str = "stop"  # stop | skip
    max_skipped: int = 10
    # Start from step 0 although the run directory holds checkpoints that cannot be restored
    # (they are moved to checkpoints_unreadable/, never deleted). Without it such a run refuses.
    restart: bool = False


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
