"""Sampling from a trained causal LM (``model.arch=gpt``) and loading runs from disk.

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

from tlm_jax import sharding as shd
from tlm_jax.config import Config, read_config
from tlm_jax.data.tokenizer import SPECIAL_TOKENS, SpecialTokens, load_tokenizer, special_tokens
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


def load_run(run_dir: str | Path, step: int | None = None) -> LoadedRun:
    """Load ``config.json``, ``tokenizer.json`` and the parameters of a checkpoint.

    Args:
        run_dir: a ``tlm pretrain --workdir``.
        step: the checkpoint step; newest complete one when None.
    """
    # Imported here: the train stack pulls in orbax, which `tlm --help` should not pay for.
    import orbax.checkpoint as ocp  # noqa: PLC0415

    from tlm_jax.models import build_model  # noqa: PLC0415
    from tlm_jax.objectives.base import build_objectives  # noqa: PLC0415
    from tlm_jax.train.optimizer import make_optimizer  # noqa: PLC0415
    from tlm_jax.train.state import state_shardings  # noqa: PLC0415

    path = Path(run_dir).expanduser().resolve()
    cfg = read_config(path / "config.json")
    tok = load_tokenizer(path / "tokenizer.json")
    special = special_tokens(tok, extra_special_names(tok))
    if not cfg.model.vocab_size:  # config.json records the (possibly padded) model vocabulary
        cfg.model.vocab_size = special.vocab_size
    objectives = build_objectives(cfg.objective, special, cfg.data.max_len)
    token_classes = max((o.token_classes for o, _ in objectives), default=0)
    model = build_model(cfg.model, token_classes=token_classes)
    tx, _ = make_optimizer(cfg.optim, max(cfg.train.steps, 1))
    ckpt_dir = path / "checkpoints"
    if not ckpt_dir.is_dir():
        raise TLMError(f"{path} has no checkpoints/", "point --run at a finished tlm pretrain workdir")
    mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        abstract, shardings = state_shardings(model, tx, mesh, cfg.data.max_len)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    manager = ocp.CheckpointManager(ckpt_dir, item_names=("state",),
                                    options=ocp.CheckpointManagerOptions(create=False))
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise TLMError(f"{ckpt_dir} holds no complete checkpoint", "train the run first")
        use = steps[-1] if step is None else step
        if use not in steps:
            raise TLMError(f"no checkpoint at step {use} in {ckpt_dir}",
                           f"use one of: {', '.join(map(str, steps))}")
        try:
            out = manager.restore(use, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target)))
        except Exception as e:  # orbax raises assorted types for mismatched/corrupt files
            raise TLMError(f"cannot restore {ckpt_dir}/{use}: {str(e).splitlines()[0][:200]}",
                           "check that the run finished and its files are intact") from e
    finally:
        manager.close()
    params = out["state"].params
    if cfg.model.linear != "dense":  # decode_step reads dense kernels
        from tlm_jax.models.sparse import densify_variables  # noqa: PLC0415

        params, _ = densify_variables(cfg.model, jax.device_get(params),
                                      jax.device_get(out["state"].model_state))
        cfg.model.linear = "dense"
        model = build_model(cfg.model, token_classes=token_classes)
    return LoadedRun(cfg, tok, special, model, params, int(use), path)


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


__all__ = ["Generator", "LoadedRun", "Sampling", "banned_ids", "filter_logits", "load_run",
           "make_sampler", "top_k_filter", "top_p_filter"]
