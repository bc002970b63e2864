"""Finished pretraining runs restored for reuse: fine-tuning, export, sampling, objectives.

:func:`load_pretrained_variables` restores a run's newest checkpoint onto a mesh (encoder weights
for fine-tuning and export). :func:`load_run` restores one checkpoint on one device with the
run's config, tokenizer and model (sampling, teachers). :func:`run_access` is the
:class:`~tlm_jax.objectives.runs.RunAccess` the run builder hands to the objectives: this loader
plus the causal-LM sampler of :mod:`tlm_jax.generate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import orbax.checkpoint as ocp

from tlm_jax import sharding as shd
from tlm_jax.config import read_config
from tlm_jax.data.tokenizer import load_tokenizer, special_tokens
from tlm_jax.errors import TLMError
from tlm_jax.generate import Generator, LoadedRun, Sampling, extra_special_names
from tlm_jax.models import build_model
from tlm_jax.models.sparse import densify_variables
from tlm_jax.objectives import RunAccess, TrainedRun, build_objectives
from tlm_jax.train.checkpoint import Checkpointer
from tlm_jax.train.optimizer import make_optimizer
from tlm_jax.train.state import state_shardings


def load_pretrained_variables(run: Path, mesh: Any, *, log: Callable[[str], None] = print
                              ) -> tuple[dict[str, Any], dict[str, Any], int]:
    """``(params, model_state, step)`` of the newest restorable checkpoint of ``run``.

    SLTrain / SPDF projections come back densified (:func:`tlm_jax.models.sparse.densify_variables`).
    """
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
        params, model_state = densify_variables(pcfg.model, params, model_state)
        log(f"densified the {pcfg.model.linear} projections of {run} (fine-tuning is dense)")
    return params, model_state, int(step)


def load_run(run_dir: str | Path, step: int | None = None) -> LoadedRun:
    """Load ``config.json``, ``tokenizer.json`` and the parameters of a checkpoint.

    Args:
        run_dir: a ``tlm pretrain --workdir``.
        step: the checkpoint step; newest complete one when None.
    """
    path = Path(run_dir).expanduser().resolve()
    cfg = read_config(path / "config.json")
    tok = load_tokenizer(path / "tokenizer.json")
    special = special_tokens(tok, extra_special_names(tok))
    if not cfg.model.vocab_size:  # config.json records the (possibly padded) model vocabulary
        cfg.model.vocab_size = special.vocab_size
    objectives = build_objectives(cfg.objective, special, cfg.data.max_len)
    token_classes = max((o.token_classes for o, _ in objectives), default=0)
    model = build_model(cfg.model, token_classes=token_classes)
    tx, _ = make_optimizer(cfg.optim, max(cfg.train.steps, 1))
    ckpt_dir = path / "checkpoints"
    if not ckpt_dir.is_dir():
        raise TLMError(f"{path} has no checkpoints/", "point --run at a finished tlm pretrain workdir")
    mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        abstract, shardings = state_shardings(model, tx, mesh, cfg.data.max_len)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    manager = ocp.CheckpointManager(ckpt_dir, item_names=("state",),
                                    options=ocp.CheckpointManagerOptions(create=False))
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise TLMError(f"{ckpt_dir} holds no complete checkpoint", "train the run first")
        use = steps[-1] if step is None else step
        if use not in steps:
            raise TLMError(f"no checkpoint at step {use} in {ckpt_dir}",
                           f"use one of: {', '.join(map(str, steps))}")
        try:
            out = manager.restore(use, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target)))
        except Exception as e:  # orbax raises assorted types for mismatched/corrupt files
            raise TLMError(f"cannot restore {ckpt_dir}/{use}: {str(e).splitlines()[0][:200]}",
                           "check that the run finished and its files are intact") from e
    finally:
        manager.close()
    params = out["state"].params
    if cfg.model.linear != "dense":  # decode_step reads dense kernels
        params, _ = densify_variables(cfg.model, jax.device_get(params),
                                      jax.device_get(out["state"].model_state))
        cfg.model.linear = "dense"
        model = build_model(cfg.model, token_classes=token_classes)
    return LoadedRun(cfg, tok, special, model, params, int(use), path)


class GeneratorSampler:
    """A :class:`~tlm_jax.objectives.runs.TextSampler` over :class:`~tlm_jax.generate.Generator`."""

    def __init__(self, run: TrainedRun) -> None:
        self.generator = Generator(run)  # type: ignore[arg-type]
        self.max_len = self.generator.max_len

    def sample(self, prompts: Sequence[Sequence[int]], *, max_new: int, temperature: float,
               top_p: float, seed: int) -> list[list[int]]:
        """Generated ids for each prompt (see :meth:`Generator.sample_ids`)."""
        return self.generator.sample_ids([list(p) for p in prompts], Sampling(
            max_new=max_new, temperature=temperature, top_p=top_p, seed=seed))


def run_access() -> RunAccess:
    """What objectives get to reach trained runs: :func:`load_run` and the LM sampler."""
    return RunAccess(load=load_run, sampler=GeneratorSampler)
