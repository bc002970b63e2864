"""Continual pretraining: a run that starts from another run's weights on a new corpus.

``continual.init_from=RUN`` makes :func:`tlm_jax.train.loop.pretrain`

* take ``RUN``'s architecture (``model.*``) and tokenizer (``RUN/tokenizer.json``; a
  different ``data.tokenizer`` is refused: the embedding rows would mean other tokens);
* start from ``RUN``'s newest (or ``continual.init_step``) parameters with a fresh
  optimizer and its own warmup and decay (the paper's re-warm/re-decay);
* form the new-corpus pool (``continual.select``: all, a random subset or the
  lowest-perplexity subset within ``continual.select_tokens``), and mix
  ``continual.replay`` of every epoch from ``RUN``'s training corpus
  (:class:`~tlm_jax.data.mixture.MixtureDataset`, resampled per epoch or fixed);
* evaluate on ``RUN``'s validation split as ``val_old`` next to the new corpus's
  ``val`` at every ``train.eval_every`` steps, so forgetting and the stability gap
  are visible in ``metrics.jsonl``.

Everything here is chosen by config and is resumable like any run: the mixture is a
pure function of the stream position, which the checkpoint stores.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tlm_jax.config import Config, read_config, validate
from tlm_jax.data import mixture as mix
from tlm_jax.data.corpus import Corpus, prepare_corpus
from tlm_jax.data.pipeline import ExampleSource
from tlm_jax.data.tokenizer import load_tokenizer, special_tokens, tokenizer_hash
from tlm_jax.errors import TLMError
from tlm_jax.models import build_model
from tlm_jax.objectives import build_objectives, document_hooks
from tlm_jax.train.checkpoint import Checkpointer
from tlm_jax.train.optimizer import make_optimizer
from tlm_jax.train.state import state_shardings


def _init_run(cfg: Config) -> Path:
    run = Path(cfg.continual.init_from).expanduser()
    for name in ("config.json", "tokenizer.json"):
        if not (run / name).is_file():
            raise TLMError(f"continual.init_from={run} has no {name}",
                           "point it at the --workdir of a finished `tlm pretrain`")
    if not (run / "checkpoints").is_dir():
        raise TLMError(f"continual.init_from={run} has no checkpoints/", "finish that run first")
    return run


def resolve_init(cfg: Config, *, log: Callable[[str], None] = print) -> Config:
    """``cfg`` with the init run's architecture and tokenizer (unchanged without init_from).

    Raises:
        TLMError: when ``data.tokenizer`` names a tokenizer other than the init run's.
    """
    if not cfg.continual.init_from:
        return cfg
    run = _init_run(cfg)
    old = read_config(run / "config.json")
    tok_path = str((run / "tokenizer.json").resolve())
    if cfg.data.tokenizer == tok_path and cfg.model == old.model:
        return cfg  # already resolved (pretrain resolves before build_run does)
    if cfg.data.tokenizer not in ("train", tok_path):
        mine = load_tokenizer(cfg.data.tokenizer, lowercase=cfg.data.lowercase)
        theirs = load_tokenizer(tok_path)
        if tokenizer_hash(mine) != tokenizer_hash(theirs):
            raise TLMError(f"data.tokenizer={cfg.data.tokenizer} differs from the tokenizer of "
                           f"continual.init_from={run} (vocabulary mismatch)",
                           "drop data.tokenizer: a continual run uses its init run's tokenizer")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=tok_path),
                              model=dataclasses.replace(old.model))
    validate(cfg)
    return cfg


def _old_corpus(cfg: Config, run: Path, log: Callable[[str], None]) -> tuple[Config, Corpus]:
    old = read_config(run / "config.json")
    data = dataclasses.replace(old.data, tokenizer=str((run / "tokenizer.json").resolve()),
                               cache_dir=cfg.data.cache_dir or old.data.cache_dir)
    corpus = prepare_corpus(data, progress=False, log=lambda m: log(f"old corpus: {m}"),
                            hooks=document_hooks(old.objective, old.data.max_len))
    return old, corpus


def select_pool(cfg: Config, corpus: Corpus) -> tuple[Any, dict[str, Any]]:
    """The new-corpus documents to train on (``continual.select``) and a record of the choice."""
    c, d = cfg.continual, cfg.data
    arrays = corpus.train
    costs = mix.trained_lengths(arrays, d.max_len, d.packing)
    info: dict[str, Any] = {"select": c.select, "candidates": len(arrays),
                            "candidate_tokens": int(costs.sum())}
    if c.select == "all":
        return arrays, {**info, "pool_docs": len(arrays), "pool_tokens": int(costs.sum())}
    if c.select == "random":
        ids = mix.select_random(costs, c.select_tokens, seed=d.seed + cfg.train.seed,
                                min_cost=c.select_min_tokens)
    else:
        ref = corpus.val if c.reference == "val" else corpus.train
        body = d.max_len - 2 if d.packing == "truncate" else 0
        lm = mix.BigramLM.fit((np.asarray(ref.doc(i))[:body or None] for i in range(len(ref))),
                              corpus.special.vocab_size)
        ppl = mix.document_perplexities(lm, arrays, body)
        ids = mix.select_lowest(ppl, costs, c.select_tokens, min_cost=c.select_min_tokens,
                                arrays=arrays)
        kept = ppl[ids]
        info.update(reference=c.reference, ppl_selected_mean=float(np.mean(kept)) if len(ids) else None,
                    ppl_all_median=float(np.median(ppl[np.isfinite(ppl)])))
    if len(ids) == 0:
        raise TLMError(f"continual.select={c.select} kept no documents "
                       f"(select_tokens={c.select_tokens}, select_min_tokens={c.select_min_tokens})",
                       "raise continual.select_tokens or lower continual.select_min_tokens")
    pool = mix.subset_arrays(arrays, np.sort(ids))
    return pool, {**info, "pool_docs": len(pool), "pool_tokens": int(costs[ids].sum())}


def continual_data(cfg: Config, corpus: Corpus, train_source: ExampleSource, *,
                   log: Callable[[str], None] = print) -> tuple[Any, dict[str, ExampleSource]]:
    """``(training source, named extra validation sources)`` of a run.

    Without ``continual.init_from`` this is ``(train_source, {})``. With it, the training
    source is the selected pool of the new corpus, mixed with ``continual.replay`` of the
    init run's training corpus, and ``{"old": init run's validation split}`` is evaluated.
    ``corpus.info["continual"]`` records the pool and mixture (saved in ``data_info.json``).
    """
    c, d = cfg.continual, cfg.data
    if not c.init_from:
        return train_source, {}
    run = _init_run(cfg)
    pool, info = select_pool(cfg, corpus)
    source: Any = (train_source if pool is corpus.train
                   else ExampleSource(pool, corpus.special, d.max_len, d.packing))
    needs_old = c.replay > 0 or c.eval_old
    old_cfg, old = _old_corpus(cfg, run, log) if needs_old else (None, None)
    if old is not None and old.info["tokenizer_hash"] != corpus.info["tokenizer_hash"]:
        raise TLMError(f"the corpus of continual.init_from={run} was tokenized differently",
                       "rebuild that run's token cache (delete it) and retry")
    if c.replay > 0 or c.epoch_examples or c.mixture == "fixed":
        sources = [source]
        shares = [1.0 - c.replay]
        if c.replay > 0:
            sources.append(ExampleSource(old.train, corpus.special, d.max_len,
                                         old_cfg.data.packing))
            shares.append(c.replay)
        epoch = c.epoch_examples or len(source)
        selection = mix.EpochMixture([len(s) for s in sources], shares, epoch,
                                     seed=d.seed + cfg.train.seed, resample=c.mixture == "dynamic")
        source = mix.MixtureDataset(sources, selection)
        info.update(mixture=c.mixture, replay=c.replay, epoch_examples=epoch,
                    epoch_counts=[int(n) for n in selection.counts],
                    replay_pool=len(sources[1]) if c.replay > 0 else 0)
    info["init_from"] = str(run.resolve())
    corpus.info["continual"] = info
    log(f"continual: from {run}; pool {info['pool_docs']} docs / {info['pool_tokens']:,} tokens "
        f"({c.select}); replay {c.replay:.0%}" + (f", {c.mixture} mixture" if c.replay else ""))
    extra = {}
    if c.eval_old and old is not None and len(old.val):
        extra["old"] = ExampleSource(old.val, corpus.special, d.max_len, old_cfg.data.packing)
    return source, extra


def load_run_state(run: str | Path, mesh: jax.sharding.Mesh, *, step: int = 0,
                   log: Callable[[str], None] = print) -> tuple[Config, Any, Any, Any, int]:
    """``(config, model, params, model_state, step)`` of run ``run``'s checkpoint on ``mesh``.

    ``step`` 0 = the newest restorable checkpoint. The model is rebuilt from the run's
    own config (and its objectives' heads); parameters land in the mesh's shardings.
    """
    run = Path(run)
    if not (run / "config.json").is_file() or not (run / "checkpoints").is_dir():
        raise TLMError(f"{run} is not a finished tlm pretrain run (config.json, checkpoints/)",
                       "pass the --workdir of a `tlm pretrain`")
    rcfg = read_config(run / "config.json")
    special = special_tokens(load_tokenizer(run / "tokenizer.json"))
    objectives = build_objectives(rcfg.objective, special, rcfg.data.max_len)
    model = build_model(rcfg.model, token_classes=max((o.token_classes for o, _ in objectives),
                                                       default=0))
    tx, _ = make_optimizer(rcfg.optim, max(rcfg.train.steps, 1))
    abstract, shardings = state_shardings(model, tx, mesh, rcfg.data.max_len)
    ckpt = Checkpointer(run / "checkpoints", every=1, keep=1_000_000, async_save=False, log=log)
    try:
        restored = ckpt.restore(abstract, shardings, only=step or None)
    finally:
        ckpt.manager.close()
    if restored is None:
        which = f"step {step}" if step else "any step"
        raise TLMError(f"no restorable checkpoint of {which} in {run / 'checkpoints'}",
                       "finish that run or pick a saved step (ls checkpoints/)")
    got, state, _, _ = restored
    return rcfg, model, state.params, state.model_state, int(got)


def init_from_run(cfg: Config, state: Any, mesh: jax.sharding.Mesh, *,
                  log: Callable[[str], None] = print) -> Any:
    """``state`` with the parameters (and model state) of ``continual.init_from``."""
    run = _init_run(cfg)
    _, _, params, model_state, step = load_run_state(run, mesh, step=cfg.continual.init_step,
                                                     log=log)
    mine = jax.tree.map(lambda x: (x.shape, str(x.dtype)), state.params)
    theirs = jax.tree.map(lambda x: (x.shape, str(x.dtype)), params)
    if jax.tree.structure(mine) != jax.tree.structure(theirs) or mine != theirs:
        raise TLMError(f"the parameters of continual.init_from={run} do not fit this model",
                       "use the init run's objectives (their heads) and architecture")
    params = jax.tree.map(lambda new, old: jax.device_put(old, new.sharding), state.params, params)
    model_state = jax.tree.map(lambda new, old: jax.device_put(old, new.sharding),
                               state.model_state, model_state)
    log(f"continual: initialised from {run} at step {step} (fresh optimizer, warmup "
        f"{cfg.optim.warmup_steps} steps)")
    return state.replace(params=params, model_state=model_state)


def eval_every_tokens(every_tokens: int, global_batch: int, max_len: int) -> int:
    """``train.eval_every`` (steps) that evaluates about every ``every_tokens`` tokens."""
    return max(1, math.ceil(every_tokens / (global_batch * max_len)))


__all__ = ["continual_data", "eval_every_tokens", "init_from_run", "load_run_state",
           "resolve_init", "select_pool"]
