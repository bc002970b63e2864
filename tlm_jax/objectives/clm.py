"""Causal language modelling: predict token ``t + 1`` from tokens ``<= t``.

Runs on a decoder (``model.arch=gpt``). Examples are ``[CLS] tokens [SEP] [PAD]...``
from the pipeline: [CLS] plays the role of BOS and [SEP] of EOS, so the model
learns to end documents. The loss is the mean next-token cross-entropy over all
positions whose *target* is not [PAD] (targets include [SEP] and any control or
think tokens an objective's document hook inserted).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from tlm_jax.errors import TLMError
from tlm_jax.objectives.base import Batch, LossTerms, Objective, cross_entropy_terms, register


def shift_labels(ids: jax.Array, pad: int) -> tuple[jax.Array, jax.Array]:
    """``(labels, weights)``: ``labels[:, t] = ids[:, t + 1]``; weight 1 where it is not [PAD]."""
    labels = jnp.concatenate([ids[:, 1:], jnp.full_like(ids[:, :1], pad)], axis=1)
    return labels, (labels != pad).astype(jnp.float32)


def lm_logits(outputs: dict[str, jax.Array], name: str) -> jax.Array:
    """``outputs["lm_logits"]`` or a clear error when the model is not a decoder."""
    if "lm_logits" not in outputs:
        raise TLMError(f"objective '{name}' needs next-token logits, which only a decoder gives",
                       "set model.arch=gpt")
    return outputs["lm_logits"]


@register("clm")
@dataclass
class CLM(Objective):
    """Next-token prediction on every non-pad position (GPT pretraining)."""

    heads: tuple[str, ...] = ("lm",)

    def transform(self, batch: Batch, rng: jax.Array) -> tuple[Batch, Batch]:
        ids = batch["input_ids"]
        labels, weights = shift_labels(ids, self.special.pad)
        inputs = {"input_ids": ids, "attention_mask": ids != self.special.pad}
        return inputs, {"labels": labels, "weights": weights}

    def loss(self, outputs: dict[str, jax.Array], targets: Batch) -> LossTerms:
        return cross_entropy_terms(lm_logits(outputs, self.name), targets["labels"],
                                   targets["weights"], self.name)
