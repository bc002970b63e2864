"""Masked language modelling (BERT): 15 % of tokens, 80/10/10 replacement."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tlm_jax.objectives.base import (
    Batch,
    LossTerms,
    Objective,
    candidate_mask,
    cross_entropy_terms,
    example_keys,
    register,
    sample_positions,
)


def mask_tokens(ids: jax.Array, key: jax.Array, objective: Objective) -> dict[str, jax.Array]:
    """Mask one sequence ``ids [L]``.

    Selects ``round(mask_rate * n)`` of the ``n`` ordinary tokens; each selected
    token becomes [MASK] with probability ``mask_token_prob``, a random ordinary
    token with ``random_token_prob``, and stays itself otherwise. The loss is
    computed at every selected position (also the unchanged ones), as in BERT.
    """
    cfg, special = objective.cfg, objective.special
    k_pos, k_kind, k_rand = jax.random.split(key, 3)
    positions, selected = sample_positions(k_pos, candidate_mask(ids, special), cfg.mask_rate,
                                           objective.max_predictions)
    original = ids[positions]
    u = jax.random.uniform(k_kind, positions.shape)
    pool = jnp.asarray(special.ordinary_ids())
    random_tok = pool[jax.random.randint(k_rand, positions.shape, 0, pool.shape[0])]
    new = jnp.where(u < cfg.mask_token_prob, special.mask,
                    jnp.where(u < cfg.mask_token_prob + cfg.random_token_prob, random_tok, original))
    new = jnp.where(selected, new, original)
    # Unselected padding slots point at distinct real positions (top_k), so this scatter
    # writes each position at most once.
    masked_ids = ids.at[positions].set(new)
    return {"input_ids": masked_ids, "masked_positions": positions,
            "labels": original, "weights": selected.astype(jnp.float32)}


@register("mlm")
class MLM(Objective):
    """BERT's masked-LM objective with logits only at the masked positions."""

    def transform(self, batch: Batch, rng: jax.Array) -> tuple[Batch, Batch]:
        ids = batch["input_ids"]
        keys = example_keys(rng, batch["index"])
        m = jax.vmap(lambda x, k: mask_tokens(x, k, self))(ids, keys)
        inputs = {"input_ids": m["input_ids"], "attention_mask": (ids != self.special.pad),
                  "masked_positions": m["masked_positions"]}
        return inputs, {"labels": m["labels"], "weights": m["weights"]}

    def loss(self, outputs: dict[str, jax.Array], targets: Batch) -> LossTerms:
        return cross_entropy_terms(outputs["mlm_logits"], targets["labels"], targets["weights"],
                                   self.name)
