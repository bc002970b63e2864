"""Pure train and eval steps: ``(state, batch) -> (state, metrics)``.

The same Python function is compiled two ways: with ``jax.jit`` over a mesh
(GSPMD shards it from the state and batch shardings) or under ``jax.pmap`` with
``axis_name`` set, where gradients and loss denominators are summed across
replicas. Losses are normalised by the *global* weight sum, so both paths, any
mesh and any gradient-accumulation factor compute the same update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tlm_jax.models import apply_model
from tlm_jax.objectives.base import Batch, Objective, with_step
from tlm_jax.train.state import TrainState

EVAL_SEED = 1234  # fixed masks at evaluation, so validation losses are comparable over time


def _psum(x: Any, axis_name: str | None) -> Any:
    return jax.lax.psum(x, axis_name) if axis_name else x


def _split_micro(tree: Any, n: int) -> Any:
    return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), tree)


def _forward_terms(model: nn.Module, objectives: list[tuple[Objective, float]], params: Any,
                   model_state: Any, prepared: list[tuple[Batch, Batch]], denoms: list[jax.Array],
                   dropout_rng: jax.Array | None) -> tuple[jax.Array, tuple[dict, Any]]:
    """Weighted objective mixture on one (micro)batch; metrics are global-normalised."""
    total = jnp.zeros((), jnp.float32)
    metrics: dict[str, jax.Array] = {}
    new_state = model_state
    for i, ((obj, weight), (inputs, targets), denom) in enumerate(
            zip(objectives, prepared, denoms, strict=True)):
        rngs = {"dropout": jax.random.fold_in(dropout_rng, i)} if dropout_rng is not None else None
        outputs, new_state = apply_model(model, {"params": params, **model_state}, inputs, rngs,
                                         train=dropout_rng is not None, heads=obj.heads)
        terms = obj.loss(outputs, targets)
        total = total + weight * terms.loss_sum / denom
        for k, v in terms.metrics.items():
            metrics[k] = v / denom
    return total, (metrics, new_state)


def _prepare(objectives: list[tuple[Objective, float]], batch: Batch, rng: jax.Array,
             axis_name: str | None) -> tuple[list[tuple[Batch, Batch]], list[jax.Array]]:
    prepared, denoms = [], []
    for i, (obj, _) in enumerate(objectives):
        inputs, targets = obj.transform(batch, jax.random.fold_in(rng, i))
        prepared.append((inputs, targets))
        denoms.append(jnp.maximum(_psum(targets["weights"].sum(), axis_name), 1.0))
    return prepared, denoms


def make_train_step(model: nn.Module, objectives: list[tuple[Objective, float]],
                    tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    grad_accum: int = 1, axis_name: str | None = None,
                    skip_nonfinite: bool = False
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Build the pure train step.

    Args:
        model: the Flax module.
        objectives: ``(objective, weight)`` pairs; the loss is their weighted sum.
        tx: the optax transformation; ``schedule`` is only reported.
        grad_accum: microbatches per step (scanned; one optimizer update per step).
        axis_name: set under ``jax.pmap``: gradients are summed over this axis.
        skip_nonfinite: a step whose loss or gradient norm is not finite leaves the state as
            it was (parameters, optimizer, model state; the step counter still advances) and
            reports ``skipped = 1`` (``train.nonfinite=skip``).
    """

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(state.rng, state.step)
        mask_rng, dropout_rng = jax.random.split(rng)
        batch = with_step(batch, state.step)  # for step-scheduled objectives (SALT)
        prepared, denoms = _prepare(objectives, batch, mask_rng, axis_name)
        grad_fn = jax.value_and_grad(_forward_terms, argnums=2, has_aux=True)

        if grad_accum == 1:
            (loss, (metrics, new_ms)), grads = grad_fn(model, objectives, state.params,
                                                       state.model_state, prepared, denoms,
                                                       dropout_rng)
        else:
            micro = _split_micro(prepared, grad_accum)

            def body(carry: Any, xs: Any) -> tuple[Any, None]:
                g_acc, l_acc, m_acc, ms = carry
                mb, idx = xs
                (loss_mb, (m, ms)), g = grad_fn(model, objectives, state.params, ms, mb, denoms,
                                          jax.random.fold_in(dropout_rng, idx))
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss_mb,
                        jax.tree.map(jnp.add, m_acc, m), ms), None

            zeros_m = jax.eval_shape(lambda: _forward_terms(
                model, objectives, state.params, state.model_state,
                jax.tree.map(lambda x: x[0], micro), denoms, dropout_rng)[1][0])
            init = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32),
                    jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros_m),
                    state.model_state)
            (grads, loss, metrics, new_ms), _ = jax.lax.scan(
                body, init, (micro, jnp.arange(grad_accum)))

        if axis_name:
            grads = jax.lax.psum(grads, axis_name)
            loss = jax.lax.psum(loss, axis_name)
            metrics = jax.lax.psum(metrics, axis_name)
            # Integer buffers (SLTrain's support) are identical on every replica; pmean would
            # turn them into floats.
            new_ms = jax.tree.map(lambda x: jax.lax.pmean(x, axis_name)
                                  if jnp.issubdtype(x.dtype, jnp.inexact) else x, new_ms)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics)
        metrics["loss"] = loss
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        ntok = (batch["input_ids"] != objectives[0][0].special.pad).sum()
        metrics["tokens"] = _psum(ntok, axis_name).astype(jnp.float32)
        if skip_nonfinite:
            ok = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"])
            keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
            params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
            new_ms = keep(new_ms, state.model_state)
            metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  model_state=new_ms)
        return new_state, metrics

    return step


def make_eval_step(model: nn.Module, objectives: list[tuple[Objective, float]], *,
                   axis_name: str | None = None
                   ) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """Evaluation: deterministic model, fixed masking RNG; returns *sums* to aggregate."""

    def step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        rng = jax.random.PRNGKey(EVAL_SEED)
        batch = with_step(batch, state.step)
        out: dict[str, jax.Array] = {}
        total = jnp.zeros((), jnp.float32)
        for i, (obj, weight) in enumerate(objectives):
            inputs, targets = obj.transform(batch, jax.random.fold_in(rng, i))
            outputs, _ = apply_model(model, {"params": state.params, **state.model_state}, inputs,
                                     None, train=False, heads=obj.heads)
            terms = obj.loss(outputs, targets)
            out[f"{obj.name}_weight"] = terms.weight_sum
            for k, v in terms.metrics.items():
                out[k] = v
            total = total + weight * terms.loss_sum / jnp.maximum(terms.weight_sum, 1.0)
        out["loss_per_batch"] = total
        return jax.lax.psum(out, axis_name) if axis_name else out

    return step


def summarize_eval(sums: list[dict[str, Any]], objectives: list[tuple[Objective, float]]
                   ) -> dict[str, float]:
    """Combine per-batch eval sums into means (each metric over its objective's weight)."""
    if not sums:
        return {}
    tot = {k: float(sum(float(s[k]) for s in sums)) for k in sums[0]}
    out: dict[str, float] = {}
    loss = 0.0
    for obj, weight in objectives:
        w = max(tot[f"{obj.name}_weight"], 1.0)
        for k, v in tot.items():
            if k.startswith(f"{obj.name}_") and not k.endswith("_weight"):
                out[k] = v / w
        loss += weight * out.get(f"{obj.name}_loss", 0.0)
    out["loss"] = loss
    return out
