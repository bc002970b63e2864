"""BERT encoder with a tied masked-LM head that scores only masked positions.

``BertModel.__call__`` takes the *inputs* dict an objective produces
(``input_ids``, ``attention_mask``, optional ``token_type_ids`` and
``masked_positions``) and returns an outputs dict: ``mlm_logits``
``[batch, predictions, vocab]`` when ``masked_positions`` is given, and ``hidden``
(every position) or, when the MLM head is all that is asked for and
``model.mlm_last_layer=masked`` (the default), ``hidden_masked`` (the masked positions:
the last layer runs only there). Gathering the masked positions before the vocabulary
projection is what makes the head cheap: ~15 % of the tokens, not all of them, meet the
largest matmul of a small model; the last layer at those positions saves most of one more
layer's work.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tlm_jax.config import ModelConfig
from tlm_jax.models.attention import take_rows
from tlm_jax.models.conv import ConvFrontEnd
from tlm_jax.models.dropout import Dropout
from tlm_jax.models.layers import MLP, Embed, LayerNorm, SelfAttention, activation
from tlm_jax.models.linear import Dense, dtype_of
from tlm_jax.models.sparse import linear_spec


class EncoderLayer(nn.Module):
    """Transformer layer: post-LN as in BERT (``norm="post"``) or pre-LN (``norm="pre"``).

    Both placements use the same parameter names, so a checkpoint's tree does not
    say which one it was trained with: the run's config does.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool,
                 queries: int | jax.Array | None = None) -> jax.Array:
        """The layer's output; with ``queries``, only at those positions (the first ``n``
        for an int, or the positions ``[batch, n]``)."""
        c = self.cfg
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        head_dim = c.head_dim or c.hidden // c.heads
        attn = SelfAttention(c.heads, head_dim, c.attention_dropout, dtype=dt, param_dtype=pdt,
                             init_std=c.init_std, linear=linear_spec(c), impl=c.attention_impl,
                             name="attention")
        attn_norm = LayerNorm(c.layer_norm_eps, dt, pdt, name="attention_norm")
        mlp = MLP(c.intermediate, c.activation, dt, pdt, c.init_std, linear=linear_spec(c),
                  name="mlp")
        mlp_norm = LayerNorm(c.layer_norm_eps, dt, pdt, name="mlp_norm")
        drop = Dropout(c.dropout)
        head = x if queries is None else take_rows(x, queries)  # the residual stream kept
        if c.norm == "pre":
            x = head + drop(attn(attn_norm(x), mask, deterministic, queries),
                            deterministic=deterministic)
            x = x + drop(mlp(mlp_norm(x)), deterministic=deterministic)
        else:
            x = attn_norm(head + drop(attn(x, mask, deterministic, queries),
                                      deterministic=deterministic))
            x = mlp_norm(x + drop(mlp(x), deterministic=deterministic))
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout."""

    cfg: ModelConfig

    def setup(self) -> None:
        c = self.cfg
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        self.word = Embed(c.vocab_size, c.hidden, ("vocab", "embed"), dt, pdt, c.init_std)
        self.position = Embed(c.max_len, c.hidden, ("positions", "embed"), dt, pdt, c.init_std)
        self.token_type = Embed(c.type_vocab_size, c.hidden, ("types", "embed"), dt, pdt,
                                c.init_std)
        self.norm = LayerNorm(c.layer_norm_eps, dt, pdt)
        self.drop = Dropout(c.dropout)

    def __call__(self, ids: jax.Array, types: jax.Array, deterministic: bool) -> jax.Array:
        pos = jnp.arange(ids.shape[1])[None, :]
        x = self.word(ids) + self.position(pos) + self.token_type(types)
        return self.drop(self.norm(x), deterministic=deterministic)


class MLMHead(nn.Module):
    """Transform (dense, activation, LayerNorm) then the tied vocabulary projection."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, h: jax.Array, word: Embed) -> jax.Array:
        c = self.cfg
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        h = Dense((c.hidden,), ("embed", "embed_out"), dtype=dt, param_dtype=pdt,
                  kernel_init=nn.initializers.normal(c.init_std), name="transform")(h)
        h = activation(c.activation)(h)
        h = LayerNorm(c.layer_norm_eps, dt, pdt, name="norm")(h)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                               ("vocab",)), (c.vocab_size,), pdt)
        return word.attend(h) + bias.astype(jnp.float32)


class BertModel(nn.Module):
    """The BERT encoder plus the heads objectives ask for.

    Heads: ``mlm`` (tied, at ``masked_positions``), ``token`` (a per-token
    classifier with ``token_classes`` outputs, for replaced/swapped-token
    objectives), ``pooler`` (tanh dense on [CLS], BERT-compatible).
    """

    cfg: ModelConfig
    token_classes: int = 0

    def setup(self) -> None:
        self.embeddings = Embeddings(self.cfg)
        self.front = self._front_end()
        self.encoder_layers = [EncoderLayer(self.cfg, name=f"layer_{i}")
                               for i in range(self.cfg.layers)]
        # Pre-LN layers leave the residual stream unnormalised: one LayerNorm closes it.
        self.final_norm = (LayerNorm(self.cfg.layer_norm_eps, dtype_of(self.cfg.dtype),
                                     dtype_of(self.cfg.param_dtype))
                           if self.cfg.norm == "pre" else None)
        self.mlm = MLMHead(self.cfg)
        if self.token_classes:
            c = self.cfg
            self.token_head = Dense((self.token_classes,), ("embed", "classes"),
                                    dtype=dtype_of(c.dtype), param_dtype=dtype_of(c.param_dtype),
                                    kernel_init=nn.initializers.normal(c.init_std))

    def _front_end(self) -> nn.Module | None:
        if self.cfg.conv_blocks <= 0:
            return None
        return ConvFrontEnd(self.cfg)

    def encode(self, inputs: dict[str, jax.Array], deterministic: bool = True,
               queries: int | jax.Array | None = None) -> jax.Array:
        """Hidden states ``[batch, length, hidden]``; with ``queries``, ``[batch, n, hidden]``.

        ``queries`` computes the last layer's output at some positions only: the first ``n``
        (an int; a [CLS] classifier reads 1) or int positions ``[batch, n]`` (MLM's masked
        positions). Its keys and values still span the sequence; its attention rows, output
        projection and MLP run on ``n`` tokens, not ``length``. The result equals those rows
        of ``encode(inputs)`` up to float rounding; with dropout on, the last layer's masks
        are drawn for the smaller shapes.
        """
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = jnp.ones_like(ids)
        types = inputs.get("token_type_ids")
        if types is None:
            types = jnp.zeros_like(ids)
        x = self.embeddings(ids, types, deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        if self.front is not None:
            x = self.front(x, deterministic)
        last = len(self.encoder_layers) - 1
        for i, layer in enumerate(self.encoder_layers):
            x = layer(x, mask, deterministic, queries if i == last else None)
        if queries is not None and last < 0:
            x = take_rows(x, queries)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x

    def __call__(self, inputs: dict[str, jax.Array], deterministic: bool = True,
                 heads: tuple[str, ...] = ("mlm",)) -> dict[str, Any]:
        if (self.cfg.mlm_last_layer == "masked" and set(heads) == {"mlm"}
                and "masked_positions" in inputs):
            # Only the masked positions' outputs reach the loss: the last layer runs there.
            hm = self.encode(inputs, deterministic, queries=inputs["masked_positions"])
            return {"hidden_masked": hm, "mlm_logits": self.mlm(hm, self.embeddings.word)}
        h = self.encode(inputs, deterministic)
        out: dict[str, Any] = {"hidden": h}
        if "mlm" in heads and "masked_positions" in inputs:
            out["mlm_logits"] = self.mlm(take_rows(h, inputs["masked_positions"]),
                                         self.embeddings.word)
        if "mlm_dense" in heads:
            out["mlm_logits_dense"] = self.mlm(h, self.embeddings.word)
        if "token" in heads and self.token_classes:
            out["token_logits"] = self.token_head(h).astype(jnp.float32)
        return out
