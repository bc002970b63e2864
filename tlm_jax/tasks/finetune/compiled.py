"""The fine-tuning model and its jitted functions: objective, optimizer, train step, prediction."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tlm_jax import sharding as shd
from tlm_jax.config import OptimConfig
from tlm_jax.models import apply_model
from tlm_jax.models.batching import default_chunk_rows, map_in_chunks
from tlm_jax.models.classifier import SequenceClassifier
from tlm_jax.objectives.base import Batch, LossTerms, Objective, ObjectiveConfig, cross_entropy_terms
from tlm_jax.tasks.finetune.backbone import Backbone
from tlm_jax.tasks.finetune.config import FinetuneConfig
from tlm_jax.train.optimizer import make_optimizer
from tlm_jax.train.state import boxed_state, state_shardings
from tlm_jax.train.step import make_train_step

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
            weights = jnp.ones(ids.shape[:1], jnp.float32)
        return inputs, {"labels": batch["labels"], "weights": weights}

    def loss(self, outputs: dict[str, Any], targets: Batch) -> LossTerms:
        return cross_entropy_terms(outputs["class_logits"], targets["labels"], targets["weights"],
                                   self.name)


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


def compile_finetune(backbone: Backbone, cfg: FinetuneConfig, num_classes: int, length: int,
                     total_steps: int) -> Compiled:
    """The model and its jitted functions for ``cfg`` (cached per architecture, classes, length, budget)."""
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
        init = jax.jit(lambda r: shd.unbox(boxed_state(model, tx, r, length)),
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


def global_array(v: np.ndarray, sharding: Any) -> Any:
    """A global array from a host array every process holds in full (single- or multi-host)."""
    return jax.make_array_from_callback(v.shape, sharding, lambda idx: v[idx])


def _replicated(x: Any, mesh: Any) -> Any:
    """``x`` gathered onto every device (so each process can read all of it)."""
    if jax.process_count() == 1:
        return x
    return jax.jit(lambda a: a, out_shardings=shd.replicated(mesh))(x)


def predict_logits(comp: Compiled, params: Any, model_state: Any, ids: np.ndarray,
                   batch: int) -> np.ndarray:
    """Logits ``[N, classes]`` for padded ids ``[N, L]`` (batches padded to a fixed size)."""
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
        x = global_array(chunk, shd.batch_sharding(comp.mesh, 2))
        logits = comp.predict(params, model_state, x)
        out.append(np.asarray(jax.device_get(_replicated(logits, comp.mesh)))[:k])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
