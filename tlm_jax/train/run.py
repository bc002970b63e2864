"""What a pretraining run is made of, and building it from a config.

:func:`build_run` prepares everything :func:`tlm_jax.train.loop.pretrain` needs before the
loop -- corpus, objectives (with access to trained runs), model, mesh, example sources and
optimizer -- into one :class:`Run`; tests, benchmarks and the subset-selection hook use it too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from tlm_jax import sharding as shd
from tlm_jax.config import Config
from tlm_jax.data.corpus import Corpus, prepare_corpus
from tlm_jax.data.insertion import InsertionPlan, build_insertions
from tlm_jax.data.pipeline import ExampleSource
from tlm_jax.data.tokenizer import padded_vocab
from tlm_jax.distributed import is_main_process
from tlm_jax.errors import TLMError
from tlm_jax.models import build_model
from tlm_jax.objectives import build_objectives, document_hooks
from tlm_jax.train.continual import continual_data, resolve_init
from tlm_jax.train.optimizer import make_optimizer
from tlm_jax.train.pretrained import run_access


def data_seed(cfg: Config) -> int:
    """Seed of the training data order."""
    return cfg.data.seed + cfg.train.seed


def total_steps(cfg: Config, num_examples: int) -> int:
    """``train.steps`` or, when 0, the steps for ``train.epochs`` passes over the data."""
    if cfg.train.steps > 0:
        return cfg.train.steps
    if cfg.train.epochs <= 0:
        raise TLMError("neither train.steps nor train.epochs is set", "set one of them")
    return max(1, math.ceil(cfg.train.epochs * num_examples / cfg.train.batch_size))


@dataclasses.dataclass
class Run:
    """Everything :func:`pretrain` builds before the loop (reused by tests and tools)."""

    cfg: Config
    corpus: Corpus
    model: nn.Module
    objectives: list
    mesh: jax.sharding.Mesh
    train_source: ExampleSource
    val_source: ExampleSource
    steps: int
    tx: Any
    schedule: Any
    # Named extra validation sets (logged as ``val_<name>``), e.g. a continual run's old corpus.
    eval_sources: dict[str, ExampleSource] = dataclasses.field(default_factory=dict)
    insertions: InsertionPlan | None = None  # Train-Once-Answer-All stream insertions


def build_run(cfg: Config, *, log: Callable[[str], None] = print,
              devices: list[jax.Device] | None = None) -> Run:
    """Prepare data, model, objectives, mesh and optimizer for ``cfg`` (no state yet).

    ``devices`` restricts the mesh to those devices (default: all).
    """
    cfg = resolve_init(cfg, log=log)
    runs = run_access()
    corpus = prepare_corpus(cfg.data, progress=cfg.train.progress and is_main_process(), log=log,
                            hooks=document_hooks(cfg.objective, cfg.data.max_len, runs=runs))
    n_tok = corpus.special.vocab_size
    if cfg.model.vocab_size and cfg.model.vocab_size < n_tok:
        raise TLMError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                       f"{n_tok} tokens (vocabulary mismatch)",
                       "drop model.vocab_size (it defaults to the tokenizer's, padded) or raise it")
    if not cfg.model.vocab_size:
        cfg.model.vocab_size = padded_vocab(n_tok)
    objectives = build_objectives(cfg.objective, corpus.special, cfg.data.max_len, corpus=corpus,
                                  runs=runs)
    token_classes = max((o.token_classes for o, _ in objectives), default=0)
    model = build_model(cfg.model, token_classes=token_classes)
    if cfg.train.parallel == "pmap":
        mesh = shd.make_mesh(data=-1, fsdp=1, tensor=1, devices=devices or jax.local_devices())
    else:
        mesh = shd.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
    shd.check_model_fits(mesh, vocab=cfg.model.vocab_size, hidden=cfg.model.hidden,
                         heads=cfg.model.heads, intermediate=cfg.model.intermediate,
                         batch=cfg.train.batch_size // max(cfg.optim.grad_accum, 1))
    train_source = ExampleSource(corpus.train, corpus.special, cfg.data.max_len, cfg.data.packing)
    val_source = ExampleSource(corpus.val, corpus.special, cfg.data.max_len, cfg.data.packing)
    train_source, eval_sources = continual_data(cfg, corpus, train_source, log=log)
    steps = total_steps(cfg, len(train_source))
    tx, schedule = make_optimizer(cfg.optim, steps)
    insertions = build_insertions(cfg.interventions.file, corpus.tokenizer, corpus.special,
                                  steps=steps, global_batch=cfg.train.batch_size,
                                  max_len=cfg.data.max_len, seed=cfg.interventions.seed)
    if insertions is not None and getattr(cfg.data, "selection", None) is not None \
            and cfg.data.selection.method != "none":
        raise TLMError("interventions.file cannot be combined with data.selection (the subset "
                       "schedule replaces the stream the insertions are planned on)",
                       "drop one of them")
    return Run(cfg, corpus, model, objectives, mesh, train_source, val_source, steps, tx, schedule,
               eval_sources, insertions)
