"""The objective interface and its registry.

An objective is three pure pieces:

* ``transform(batch, rng) -> (inputs, targets)``: jit-able; turns a token batch
  (``input_ids [B, L]``, ``index [B]`` = each row's place in the global batch)
  into model inputs and loss targets. Randomness is drawn per example from
  ``fold_in(rng, index)``, so the same example gets the same masks whatever the
  mesh, the number of processes or jit-vs-pmap.
* ``loss(outputs, targets) -> LossTerms``: sums, not means, so data-parallel
  replicas can be combined exactly (``loss_sum / global weight_sum``).
* optional host-side ``prepare_document`` for document-level rewrites (control
  tokens, thinking trajectories) applied before tokens are cached.

A new objective is one file plus one ``@register("name")`` line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from tlm_jax.config import ObjectiveConfig
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.errors import TLMError

Batch = dict[str, jax.Array]


class LossTerms(NamedTuple):
    """Weighted sums of a loss; ``metrics`` are sums too (divided by ``weight_sum``)."""

    loss_sum: jax.Array
    weight_sum: jax.Array
    metrics: dict[str, jax.Array]


@dataclass
class Objective:
    """Base class: subclasses override :meth:`transform` and :meth:`loss`."""

    cfg: ObjectiveConfig
    special: SpecialTokens
    max_len: int
    options: dict[str, Any] = field(default_factory=dict)
    name: str = "objective"
    heads: tuple[str, ...] = ("mlm",)
    token_classes: int = 0

    def transform(self, batch: Batch, rng: jax.Array) -> tuple[Batch, Batch]:
        raise NotImplementedError

    def loss(self, outputs: dict[str, jax.Array], targets: Batch) -> LossTerms:
        raise NotImplementedError

    def prepare_document(self, text: str) -> str:
        """Host-side document rewrite before tokenization (identity by default)."""
        return text

    @property
    def max_predictions(self) -> int:
        """Static number of predicted positions per sequence."""
        if self.cfg.max_predictions > 0:
            return self.cfg.max_predictions
        return max(1, math.ceil(self.cfg.mask_rate * self.max_len))


def example_keys(rng: jax.Array, index: jax.Array) -> jax.Array:
    """One PRNG key per example, a function of its index in the global batch only."""
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(index)


def candidate_mask(ids: jax.Array, special: SpecialTokens) -> jax.Array:
    """True where a token may be selected (not [PAD]/[CLS]/[SEP]/... )."""
    cand = jnp.ones_like(ids, dtype=bool)
    for s in special.all:
        cand &= ids != s
    return cand


def sample_positions(key: jax.Array, candidates: jax.Array, rate: float,
                     max_predictions: int) -> tuple[jax.Array, jax.Array]:
    """Pick ``round(rate * #candidates)`` (at least 1, at most ``max_predictions``) positions.

    Returns ``(positions [P], selected [P] bool)``: a uniformly random subset of
    the candidate positions, padded to the static size ``P``.
    """
    scores = jax.random.uniform(key, candidates.shape)
    scores = jnp.where(candidates, scores, 2.0)  # non-candidates sort last
    _, positions = jax.lax.top_k(-scores, max_predictions)
    n_cand = candidates.sum()
    n_pick = jnp.clip(jnp.round(rate * n_cand).astype(jnp.int32), 1, max_predictions)
    n_pick = jnp.minimum(n_pick, n_cand)
    selected = jnp.arange(max_predictions) < n_pick
    return positions.astype(jnp.int32), selected


def cross_entropy_terms(logits: jax.Array, labels: jax.Array, weights: jax.Array,
                        prefix: str) -> LossTerms:
    """Weighted softmax cross-entropy and accuracy sums in float32."""
    logits = logits.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    gold = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    nll = logz - gold
    w = weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return LossTerms((nll * w).sum(), w.sum(),
                     {f"{prefix}_loss": (nll * w).sum(), f"{prefix}_accuracy": (correct * w).sum()})


OBJECTIVES: dict[str, Callable[..., Objective]] = {}


def register(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator adding an objective to the registry under ``name``."""

    def deco(cls: type[Objective]) -> type[Objective]:
        OBJECTIVES[name] = cls
        return cls

    return deco


def parse_names(names: list[str]) -> list[tuple[str, float]]:
    """``["mlm:0.5", "slm:0.5"]`` -> ``[("mlm", 0.5), ("slm", 0.5)]`` (weight 1 by default)."""
    out = []
    for entry in names:
        name, _, w = str(entry).partition(":")
        try:
            weight = float(w) if w else 1.0
        except ValueError as e:
            raise TLMError(f"objective weight in '{entry}' is not a number",
                           "write name:weight, e.g. mlm:0.5") from e
        out.append((name.strip(), weight))
    if not out:
        raise TLMError("no objective given", "set objective.names=[mlm]")
    return out


def build_objectives(cfg: ObjectiveConfig, special: SpecialTokens,
                     max_len: int) -> list[tuple[Objective, float]]:
    """Instantiate the weighted mixture named by ``cfg.names``."""
    # Importing the package registers the built-in objectives.
    import tlm_jax.objectives  # noqa: F401, PLC0415

    built = []
    for name, weight in parse_names(cfg.names):
        if name not in OBJECTIVES:
            raise TLMError(f"unknown objective '{name}'",
                           f"use one of: {', '.join(sorted(OBJECTIVES))}")
        opts = dict(cfg.options.get(name, {})) if isinstance(cfg.options.get(name), dict) else {}
        built.append((OBJECTIVES[name](cfg=cfg, special=special, max_len=max_len,
                                       options=opts, name=name), weight))
    return built
