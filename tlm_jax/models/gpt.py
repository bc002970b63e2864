"""GPT-style decoder: pre-LN blocks, causal self-attention, tied output embedding.

``GPTModel`` shares :class:`~tlm_jax.config.ModelConfig` and the building blocks of
:mod:`tlm_jax.models.layers` with the BERT encoder (``model.arch=gpt`` selects it).
It takes the same *inputs* dict (``input_ids``, ``attention_mask``) and returns:

* ``hidden`` ``[B, L, H]`` (after the final LayerNorm), always;
* ``lm_logits`` ``[B, L, V]`` when ``"lm"`` is in ``heads``: position ``t``
  scores the token at ``t + 1`` (the causal objective shifts the labels);
* ``mlm_logits`` ``[B, P, V]`` at ``masked_positions`` when ``"mlm"`` is asked for
  (the same tied projection, gathered first; lets encoder objectives run on it);
* ``token_logits`` ``[B, L, token_classes]`` when ``"token"`` is asked for.

The output projection is the transposed word embedding (``Embed.attend``), as in
GPT-2; there is no output bias. Position embeddings are learned.

:func:`decode_step` runs one token through the same parameters with a key/value
cache (:func:`init_cache`), for sampling in ``O(length)`` instead of ``O(length^2)``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tlm_jax.config import ModelConfig
from tlm_jax.models.attention import take_rows
from tlm_jax.models.dropout import Dropout
from tlm_jax.models.layers import (
    MLP,
    Embed,
    LayerNorm,
    SelfAttention,
    activation,
    layer_norm,
)
from tlm_jax.models.linear import Dense, dtype_of, matmul
from tlm_jax.models.sparse import linear_spec


class DecoderLayer(nn.Module):
    """Pre-LN block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (GPT-2)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
        c = self.cfg
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        head_dim = c.head_dim or c.hidden // c.heads
        h = LayerNorm(c.layer_norm_eps, dt, pdt, name="attention_norm")(x)
        a = SelfAttention(c.heads, head_dim, c.attention_dropout, causal=True, dtype=dt,
                          param_dtype=pdt, init_std=c.init_std, linear=linear_spec(c),
                          impl=c.attention_impl, name="attention")(h, mask, deterministic)
        x = x + Dropout(c.dropout)(a, deterministic=deterministic)
        h = LayerNorm(c.layer_norm_eps, dt, pdt, name="mlp_norm")(x)
        h = MLP(c.intermediate, c.activation, dt, pdt, c.init_std, linear=linear_spec(c),
                name="mlp")(h)
        x = x + Dropout(c.dropout)(h, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class GPTEmbeddings(nn.Module):
    """Word + learned position embeddings, then dropout (no LayerNorm: pre-LN blocks)."""

    cfg: ModelConfig

    def setup(self) -> None:
        c = self.cfg
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        self.word = Embed(c.vocab_size, c.hidden, ("vocab", "embed"), dt, pdt, c.init_std)
        self.position = Embed(c.max_len, c.hidden, ("positions", "embed"), dt, pdt, c.init_std)
        self.drop = Dropout(c.dropout)

    def __call__(self, ids: jax.Array, deterministic: bool) -> jax.Array:
        pos = jnp.arange(ids.shape[1])[None, :]
        return self.drop(self.word(ids) + self.position(pos), deterministic=deterministic)


class GPTModel(nn.Module):
    """A causal decoder with a tied LM head (see the module docstring for the outputs)."""

    cfg: ModelConfig
    token_classes: int = 0

    def setup(self) -> None:
        c = self.cfg
        self.embeddings = GPTEmbeddings(c)
        self.decoder_layers = [DecoderLayer(c, name=f"layer_{i}") for i in range(c.layers)]
        self.final_norm = LayerNorm(c.layer_norm_eps, dtype_of(c.dtype), dtype_of(c.param_dtype))
        if self.token_classes:
            self.token_head = Dense((self.token_classes,), ("embed", "classes"),
                                    dtype=dtype_of(c.dtype), param_dtype=dtype_of(c.param_dtype),
                                    kernel_init=nn.initializers.normal(c.init_std))

    def encode(self, inputs: dict[str, jax.Array], deterministic: bool = True) -> jax.Array:
        """Final-LayerNorm hidden states ``[batch, length, hidden]``."""
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = jnp.ones_like(ids)
        x = self.embeddings(ids, deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        for layer in self.decoder_layers:
            x = layer(x, mask, deterministic)
        return self.final_norm(x)

    def __call__(self, inputs: dict[str, jax.Array], deterministic: bool = True,
                 heads: tuple[str, ...] = ("lm",)) -> dict[str, Any]:
        h = self.encode(inputs, deterministic)
        out: dict[str, Any] = {"hidden": h}
        word = self.embeddings.word
        if "lm" in heads:
            out["lm_logits"] = word.attend(h)
        if "mlm" in heads and "masked_positions" in inputs:
            out["mlm_logits"] = word.attend(take_rows(h, inputs["masked_positions"]))
        if "token" in heads and self.token_classes:
            out["token_logits"] = self.token_head(h).astype(jnp.float32)
        return out



# ------------------------------------------------------------------------------ cached decoding


def init_cache(cfg: ModelConfig, batch: int, length: int) -> dict[str, jax.Array]:
    """Empty key/value cache ``[layers, batch, length, heads, head_dim]`` for :func:`decode_step`."""
    head_dim = cfg.head_dim or cfg.hidden // cfg.heads
    shape = (cfg.layers, batch, length, cfg.heads, head_dim)
    dt = dtype_of(cfg.dtype)
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}


def _layer_norm(x: jax.Array, p: dict[str, jax.Array], eps: float, dt: jnp.dtype) -> jax.Array:
    return layer_norm(x, p["scale"], p["bias"], eps, dt)


def _dense(x: jax.Array, p: dict[str, jax.Array], contract: int, dt: jnp.dtype) -> jax.Array:
    return matmul(x, p["kernel"], contract, dt, p["bias"])


def decode_step(cfg: ModelConfig, params: dict[str, Any], ids: jax.Array, pos: jax.Array,
                cache: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One token per row through :class:`GPTModel` with a key/value cache.

    ``ids [B]`` are the tokens at position ``pos`` (the same for every row);
    returns the next-token logits ``[B, V]`` (float32) and the updated cache.
    The same arithmetic as the module (pre-LN blocks, causal attention over
    positions ``<= pos``, tied projection) on the module's own parameter tree;
    deterministic (no dropout). Tests check it against the full forward pass.
    """
    dt = dtype_of(cfg.dtype)
    head_dim = cfg.head_dim or cfg.hidden // cfg.heads
    emb = params["embeddings"]
    x = (jnp.take(emb["word"]["embedding"], ids, axis=0).astype(dt)
         + jnp.take(emb["position"]["embedding"], pos, axis=0).astype(dt)[None])
    length = cache["k"].shape[2]
    allowed = jnp.arange(length) <= pos  # [T]
    ks, vs = [], []
    for i in range(cfg.layers):
        p = params[f"layer_{i}"]
        h = _layer_norm(x, p["attention_norm"], cfg.layer_norm_eps, dt)
        qkv = _dense(h, p["attention"]["qkv"], 1, dt)  # [B, 3, H, D]
        q = qkv[:, 0] * jnp.asarray(head_dim ** -0.5, dt)
        k_all = jax.lax.dynamic_update_index_in_dim(cache["k"][i], qkv[:, 1], pos, axis=1)
        v_all = jax.lax.dynamic_update_index_in_dim(cache["v"][i], qkv[:, 2], pos, axis=1)
        ks.append(k_all)
        vs.append(v_all)
        scores = jnp.einsum("bhd,bkhd->bhk", q, k_all, preferred_element_type=jnp.float32)
        scores = jnp.where(allowed[None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)
        ctx = jnp.einsum("bhk,bkhd->bhd", probs, v_all, preferred_element_type=jnp.float32)
        x = x + _dense(ctx.astype(dt), p["attention"]["out"], 2, dt)
        h = _layer_norm(x, p["mlp_norm"], cfg.layer_norm_eps, dt)
        h = activation(cfg.activation)(_dense(h, p["mlp"]["wi"], 1, dt))
        x = x + _dense(h, p["mlp"]["wo"], 1, dt)
    h = _layer_norm(x, params["final_norm"], cfg.layer_norm_eps, dt)
    logits = jnp.einsum("be,ve->bv", h, emb["word"]["embedding"].astype(dt),
                        preferred_element_type=jnp.float32)
    return logits, {"k": jnp.stack(ks), "v": jnp.stack(vs)}
