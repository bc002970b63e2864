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

A new objective is one file with one ``@register("name")`` class, plus its import in
:mod:`tlm_jax.objectives.build` (the registry line).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from tlm_jax.config import ObjectiveConfig
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.errors import TLMError
from tlm_jax.objectives.runs import RunAccess

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
    # Access to trained runs for objectives that build on one (see :mod:`.runs`).
    runs: RunAccess | None = field(default=None, repr=False, compare=False)

    def transform(self, batch: Batch, rng: jax.Array) -> tuple[Batch, Batch]:
        raise NotImplementedError

    def loss(self, outputs: dict[str, jax.Array], targets: Batch) -> LossTerms:
        raise NotImplementedError

    def prepare_document(self, text: str) -> str:
        """Host-side document rewrite before tokenization (identity by default)."""
        return text

    # -- host-side hooks used by the data preparation (see :func:`document_hooks`) --------
    #: Special tokens this objective needs in the vocabulary (control tokens, think tags).
    extra_special: ClassVar[tuple[str, ...]] = ()

    def prepare_documents(self, texts: list[str]) -> list[str]:
        """Batched :meth:`prepare_document` (override when a batch is cheaper, e.g. an LM)."""
        return [self.prepare_document(t) for t in texts]

    def document_key(self) -> str:
        """Fingerprint of the document rewrite for cache keys; ``""`` when it is the identity.

        Objectives must build cheaply (heavy work goes in :meth:`setup`): the data
        preparation instantiates them once, before the tokenizer exists, to ask this.
        """
        cls = type(self)
        if (cls.prepare_document is Objective.prepare_document
                and cls.prepare_documents is Objective.prepare_documents):
            return ""
        return f"{cls.__name__}:{json.dumps(self.options, sort_keys=True, default=str)}"

    def setup(self, corpus: Any) -> None:
        """One host-side preparation after the corpus exists (tables, teachers); no-op here."""

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
    top = jax.lax.stop_gradient(logits.max(-1))
    logz = top + jnp.log(jnp.exp(logits - top[..., None]).sum(-1))
    gold = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    nll = logz - gold
    w = weights.astype(jnp.float32)
    # "The gold logit is the largest" shares the logsumexp's max; an argmax over the
    # vocabulary is a second pass that cost ~2 % of a CPU MLM step. A tie counts as correct.
    correct = (gold >= top).astype(jnp.float32)
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


def with_step(batch: Batch, step: jax.Array) -> Batch:
    """``batch`` plus ``step`` (the optimizer step, broadcast per example) for scheduled objectives."""
    rows = batch["index"].shape if "index" in batch else batch["input_ids"].shape[:1]
    return {**batch, "step": jnp.broadcast_to(jnp.asarray(step, jnp.int32), rows)}
