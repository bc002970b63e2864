"""The train state: a plain pytree of arrays, sharded by logical axis names."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from tlm_jax import sharding as shd
from tlm_jax.models import init_variables


@struct.dataclass
class TrainState:
    """Everything a step reads and writes; checkpointed whole.

    ``model_state`` holds non-trainable collections (e.g. BatchNorm
    ``batch_stats``); ``rng`` is a raw ``uint32[2]`` key so it serializes.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any
    rng: jax.Array


def boxed_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                length: int) -> TrainState:
    """A freshly initialised state whose leaves still carry their logical axis names."""
    init_rng, state_rng = jax.random.split(rng)
    variables = init_variables(model, init_rng, length)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    # Optax maps over the boxed params, so mu/nu inherit the parameters' axis names.
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=model_state, rng=state_rng)


def state_shardings(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                    length: int) -> tuple[TrainState, TrainState]:
    """``(abstract_state, shardings)`` for the unboxed state on ``mesh``."""
    abstract_boxed = jax.eval_shape(lambda r: boxed_state(model, tx, r, length),
                                    jax.random.PRNGKey(0))
    shardings = shd.shardings_of(abstract_boxed, mesh)
    abstract = shd.unbox(abstract_boxed)
    return abstract, shardings


def create_state(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, seed: int,
                 length: int) -> tuple[TrainState, TrainState]:
    """Initialise the state directly into its shardings (no host copy of the params)."""
    _, shardings = state_shardings(model, tx, mesh, length)
    init = jax.jit(lambda r: shd.unbox(boxed_state(model, tx, r, length)),
                   out_shardings=shardings)
    return init(jax.random.PRNGKey(seed)), shardings


def state_memory(model: nn.Module, tx: optax.GradientTransformation, mesh: Any,
                 length: int) -> dict[str, dict[str, float]]:
    """Bytes per device of params, optimizer state and the rest, from abstract shapes.

    ``mesh`` may be a real ``Mesh`` or a ``jax.sharding.AbstractMesh`` of any size
    (see :func:`tlm_jax.sharding.abstract_mesh`): nothing is allocated.
    """
    abstract, shardings = state_shardings(model, tx, mesh, length)
    parts = {"params": (abstract.params, shardings.params),
             "opt_state": (abstract.opt_state, shardings.opt_state),
             "other": ((abstract.step, abstract.model_state, abstract.rng),
                       (shardings.step, shardings.model_state, shardings.rng))}
    out = {k: shd.shard_bytes(a, s) for k, (a, s) in parts.items()}
    out["total"] = {k: sum(v[k] for v in out.values()) for k in ("per_device", "total")}
    return out
