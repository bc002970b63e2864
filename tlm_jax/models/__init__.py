"""Pure Flax (linen) models and the functional ``init``/``apply`` wrappers.

``build_model(cfg)`` returns the module for a :class:`~tlm_jax.config.ModelConfig`;
``init_variables``/``apply_model`` are the pure-function interface:
``apply_model(model, variables, inputs, rngs)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tlm_jax.config import ModelConfig
from tlm_jax.errors import TLMError
from tlm_jax.models.bert import BertModel
from tlm_jax.models.gpt import GPTModel
from tlm_jax.models.sparse import SPARSE_COLLECTION
from tlm_jax.sharding import unbox

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"bert": BertModel, "gpt": GPTModel}


def register_architecture(name: str, factory: Callable[..., nn.Module]) -> None:
    """Add an architecture (``cfg, token_classes=...`` -> module)."""
    ARCHITECTURES[name] = factory


def build_model(cfg: ModelConfig, token_classes: int = 0) -> nn.Module:
    """The module for ``cfg.arch``."""
    if cfg.vocab_size <= 0:
        raise TLMError("model.vocab_size is not set", "build the model after the tokenizer")
    if cfg.arch not in ARCHITECTURES:
        raise TLMError(f"unknown model.arch '{cfg.arch}'",
                       f"use one of: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[cfg.arch](cfg, token_classes=token_classes)


def dummy_inputs(batch: int, length: int, predictions: int = 1) -> dict[str, jax.Array]:
    """Shape-only inputs for ``init``."""
    return {
        "input_ids": jnp.zeros((batch, length), jnp.int32),
        "attention_mask": jnp.ones((batch, length), jnp.int32),
        "masked_positions": jnp.zeros((batch, predictions), jnp.int32),
    }


def init_variables(model: nn.Module, rng: jax.Array, length: int,
                   heads: tuple[str, ...] = ("mlm", "token")) -> dict[str, Any]:
    """All variable collections (``params`` and e.g. ``batch_stats``), boxed with axis names."""
    return model.init({"params": rng, "dropout": rng}, dummy_inputs(1, length),
                      deterministic=True, heads=heads)


# Non-trainable collections that no forward pass may change (SLTrain's support, SPDF's masks).
STATIC_COLLECTIONS = (SPARSE_COLLECTION,)


def apply_model(model: nn.Module, variables: dict[str, Any], inputs: dict[str, jax.Array],
                rngs: dict[str, jax.Array] | None = None, *, train: bool = False,
                heads: tuple[str, ...] = ("mlm",)) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pure forward pass: returns ``(outputs, updated_mutable_collections)``.

    In training mode the non-``params`` collections (BatchNorm statistics) are
    mutable and come back updated; in eval mode they come back unchanged.
    :data:`STATIC_COLLECTIONS` are never mutable: they come back as they went in.
    """
    mutable = [k for k in variables if k != "params" and k not in STATIC_COLLECTIONS] \
        if train else []
    if mutable:
        out, updates = model.apply(variables, inputs, deterministic=not train, heads=heads,
                                   rngs=rngs or {}, mutable=mutable)
        static = {k: v for k, v in variables.items() if k in STATIC_COLLECTIONS}
        return out, {**static, **dict(updates)}
    out = model.apply(variables, inputs, deterministic=not train, heads=heads, rngs=rngs or {})
    return out, {k: v for k, v in variables.items() if k != "params"}


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(x.size for x in jax.tree.leaves(unbox(params))))
