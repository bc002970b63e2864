"""Sampling from a trained causal LM (``model.arch=gpt``).

Runs are loaded from disk by :func:`tlm_jax.train.pretrained.load_run`.

The sampler is one jitted, fixed-shape loop: a ``[batch, length]`` token buffer
holds the prompts, and ``lax.fori_loop`` fills position ``i`` from the logits at
``i - 1`` until every row has emitted [SEP] (the end-of-document token the model
was trained on) or the buffer is full. Prompt lengths, temperature, top-k and
top-p are traced values, so one compilation serves every prompt and setting.

Decoding uses a key/value cache (:func:`tlm_jax.models.gpt.decode_step`): one
token per row per step, prompt tokens included, so a sample costs ``O(length)``
token-forwards. ``make_sampler(..., cache=False)`` is the cache-free reference
that re-runs the whole causal forward pass each step (``O(length^2)``).

Token filtering follows the usual order: banned ids -> temperature -> top-k ->
top-p (nucleus). Control tokens (``<|...|>``, conditional training) are always
banned, as are [PAD], [CLS], [MASK] and [UNK].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from tlm_jax.config import Config
from tlm_jax.data.tokenizer import SPECIAL_TOKENS, SpecialTokens
from tlm_jax.errors import TLMError
from tlm_jax.models.gpt import GPTModel, decode_step, init_cache

NEG_INF = -1e30  # a finite "minus infinity": softmax stays NaN-free even if every id is banned


@dataclass
class LoadedRun:
    """A trained run: its config, tokenizer, model and (unboxed) parameters."""

    cfg: Config
    tokenizer: Tokenizer
    special: SpecialTokens
    model: nn.Module
    params: Any
    step: int
    path: Path


def extra_special_names(tok: Tokenizer) -> list[str]:
    """Added special tokens beyond [PAD] [UNK] [CLS] [SEP] [MASK], in id order."""
    added = tok.get_added_tokens_decoder()
    return [t.content for _, t in sorted(added.items())
            if t.special and t.content not in SPECIAL_TOKENS]


# ------------------------------------------------------------------------------ filtering


def top_k_filter(logits: jax.Array, k: jax.Array | int) -> jax.Array:
    """Keep the ``k`` largest logits of the last axis (ties with the k-th kept); ``k <= 0``: all."""
    k = jnp.asarray(k, jnp.int32)
    vocab = logits.shape[-1]
    sorted_desc = -jnp.sort(-logits, axis=-1)
    kth = jnp.take(sorted_desc, jnp.clip(k, 1, vocab) - 1, axis=-1)[..., None]
    return jnp.where((k > 0) & (logits < kth), NEG_INF, logits)


def top_p_filter(logits: jax.Array, p: jax.Array | float) -> jax.Array:
    """Nucleus filter: keep the smallest top set whose probability mass reaches ``p``.

    A token is kept when the mass of the tokens ranked strictly above it is ``< p``,
    so the most likely token is always kept; ``p >= 1`` keeps everything.
    """
    p = jnp.asarray(p, jnp.float32)
    sorted_desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_desc.astype(jnp.float32), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < p
    cutoff = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where((p < 1.0) & (logits < cutoff), NEG_INF, logits)


def filter_logits(logits: jax.Array, banned: jax.Array, temperature: jax.Array | float,
                  top_k: jax.Array | int, top_p: jax.Array | float) -> jax.Array:
    """Banned ids -> temperature -> top-k -> top-p, on logits ``[..., V]``."""
    logits = jnp.where(banned, NEG_INF, logits.astype(jnp.float32))
    logits = logits / jnp.maximum(jnp.asarray(temperature, jnp.float32), 1e-6)
    return top_p_filter(top_k_filter(logits, top_k), top_p)


# ------------------------------------------------------------------------------ sampling


def make_sampler(model: nn.Module, eos: int, pad: int, *, cache: bool = True) -> Any:
    """A jitted ``sample(params, buf, start, rng, banned, temperature, top_k, top_p, greedy)``.

    ``buf [B, T]`` holds each row's prompt in ``[0, start[b])``; positions from
    ``start[b]`` on are generated until [SEP] (kept) and then filled with [PAD].
    Returns the filled buffer. Position ``i`` is drawn from the logits at ``i - 1``.

    ``cache=True`` (a :class:`~tlm_jax.models.gpt.GPTModel` only) feeds one token
    per step through :func:`~tlm_jax.models.gpt.decode_step` with a key/value
    cache; ``cache=False`` re-runs the full causal forward pass every step (any
    decoder module; the reference the cached path is tested against).
    """
    use_cache = cache and isinstance(model, GPTModel)

    def step_token(i: jax.Array, toks: jax.Array, done: jax.Array, last: jax.Array,
                   start: jax.Array, rng: jax.Array, banned: jax.Array, temperature: jax.Array,
                   top_k: jax.Array, top_p: jax.Array, greedy: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
        """Draw position ``i`` from ``last`` (the logits at ``i - 1``); prompt positions stay."""
        filtered = filter_logits(last, banned, temperature, top_k, top_p)
        drawn = jax.random.categorical(jax.random.fold_in(rng, i), filtered, axis=-1)
        nxt = jnp.where(greedy, jnp.argmax(filtered, -1), drawn).astype(toks.dtype)
        active = i >= start
        nxt = jnp.where(done, pad, nxt)
        col = jax.lax.dynamic_index_in_dim(toks, i, axis=1, keepdims=False)
        toks = jax.lax.dynamic_update_index_in_dim(toks, jnp.where(active, nxt, col), i, 1)
        return toks, done | (active & (nxt == eos))

    def sample(params: Any, buf: jax.Array, start: jax.Array, rng: jax.Array, banned: jax.Array,
               temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
               greedy: jax.Array) -> jax.Array:
        total = buf.shape[1]
        opts = (start, rng, banned, temperature, top_k, top_p, greedy)
        done0 = jnp.zeros(buf.shape[:1], bool)
        if use_cache:
            def body_cached(i: jax.Array, carry: tuple[jax.Array, jax.Array, Any]
                            ) -> tuple[jax.Array, jax.Array, Any]:
                toks, done, kv = carry
                tok_i = jax.lax.dynamic_index_in_dim(toks, i, axis=1, keepdims=False)
                last, kv = decode_step(model.cfg, params, tok_i, i, kv)
                toks, done = step_token(i + 1, toks, done, last, *opts)
                return toks, done, kv

            kv0 = init_cache(model.cfg, buf.shape[0], total)
            toks, _, _ = jax.lax.fori_loop(0, total - 1, body_cached, (buf, done0, kv0))
            return toks

        embedding = params["embeddings"]["word"]["embedding"]

        def body(i: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            toks, done = carry
            inputs = {"input_ids": toks, "attention_mask": toks != pad}
            hidden = model.apply({"params": params}, inputs, deterministic=True, heads=())["hidden"]
            # Project only position i - 1 onto the vocabulary (tied embedding, as the lm head).
            h = jax.lax.dynamic_index_in_dim(hidden, i - 1, axis=1, keepdims=False)
            last = jnp.einsum("be,ve->bv", h.astype(jnp.float32), embedding.astype(jnp.float32))
            return step_token(i, toks, done, last, *opts)

        toks, _ = jax.lax.fori_loop(jnp.maximum(jnp.min(start), 1), total, body, (buf, done0))
        return toks

    return jax.jit(sample)


def banned_ids(special: SpecialTokens, tok: Tokenizer, extra: list[int] | tuple[int, ...] = (),
               model_vocab: int = 0) -> np.ndarray:
    """Boolean ``[model_vocab]``: [PAD] [CLS] [MASK] [UNK], ``<|...|>`` control tokens, ``extra``
    and the padding rows of a model vocabulary larger than the tokenizer's."""
    banned = np.ones(max(model_vocab, special.vocab_size), bool)
    banned[:special.vocab_size] = False
    banned[[special.pad, special.cls, special.mask, special.unk, *extra]] = True
    for name in extra_special_names(tok):
        if name.startswith("<|") and name.endswith("|>"):
            banned[tok.token_to_id(name)] = True
    return banned


@dataclass
class Sampling:
    """Decoding settings (``temperature=0`` or ``greedy`` = argmax)."""

    max_new: int = 48
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    seed: int = 0


class Generator:
    """Samples continuations of text prompts from a loaded run (compiled once per batch size)."""

    def __init__(self, run: LoadedRun, max_len: int | None = None) -> None:
        if run.cfg.model.arch != "gpt":
            raise TLMError(f"{run.path} holds a '{run.cfg.model.arch}' model, which cannot generate",
                           "generate from a run pretrained with model.arch=gpt")
        self.run = run
        self.max_len = min(max_len or run.cfg.data.max_len, run.cfg.model.max_len)
        self.banned = jnp.asarray(banned_ids(run.special, run.tokenizer,
                                             model_vocab=run.cfg.model.vocab_size))
        self._sample = make_sampler(run.model, run.special.sep, run.special.pad)

    def encode_prompt(self, prompt: str, control: str | None = None) -> list[int]:
        """``[CLS] (control) prompt-tokens``; ``control`` is a special token such as ``<|good|>``."""
        ids = [self.run.special.cls]
        if control:
            cid = self.run.tokenizer.token_to_id(control)
            if cid is None:
                raise TLMError(f"the run's tokenizer has no token {control!r}",
                               f"use one of: {', '.join(extra_special_names(self.run.tokenizer))}")
            ids.append(cid)
        if prompt:
            ids += self.run.tokenizer.encode(prompt, add_special_tokens=False).ids
        return ids

    def sample_ids(self, prompts: list[list[int]], s: Sampling) -> list[list[int]]:
        """Generated ids (prompt excluded, up to and without [SEP]) for each prompt."""
        n = len(prompts)
        longest = max(len(p) for p in prompts)
        if longest >= self.max_len:
            raise TLMError(f"the prompt has {longest} tokens; the model's window is {self.max_len}",
                           "shorten the prompt")
        total = min(self.max_len, longest + s.max_new)
        buf = np.full((n, total), self.run.special.pad, np.int32)
        for i, p in enumerate(prompts):
            buf[i, :len(p)] = p
        start = np.asarray([len(p) for p in prompts], np.int32)
        greedy = s.greedy or s.temperature <= 0
        out = np.asarray(self._sample(
            self.run.params, jnp.asarray(buf), jnp.asarray(start), jax.random.PRNGKey(s.seed),
            self.banned, jnp.float32(max(s.temperature, 1e-6)), jnp.int32(s.top_k),
            jnp.float32(s.top_p), jnp.bool_(greedy)))
        result = []
        for i, p in enumerate(prompts):
            row = out[i, len(p):len(p) + s.max_new].tolist()
            cut = [j for j, t in enumerate(row) if t in (self.run.special.sep, self.run.special.pad)]
            result.append(row[:cut[0]] if cut else row)
        return result

    def generate(self, prompt: str, s: Sampling, num_samples: int = 1,
                 control: str | None = None, include_prompt: bool = False) -> list[str]:
        """``num_samples`` decoded continuations of ``prompt`` (special tokens removed).

        With ``include_prompt`` the prompt and continuation are decoded together (so a
        continuation that starts inside a word joins it).
        """
        ids = self.encode_prompt(prompt, control)
        outs = self.sample_ids([ids] * num_samples, s)
        keep = ids if include_prompt else []
        return [self.run.tokenizer.decode(keep + o, skip_special_tokens=True) for o in outs]


__all__ = ["Generator", "LoadedRun", "Sampling", "banned_ids", "extra_special_names", "filter_logits",
           "make_sampler", "top_k_filter", "top_p_filter"]
