"""Per-document outputs of a tlm_jax model: pooled features and token NLL.

The data layer holds the selection and filtering maths but cannot run models;
this module is where a model meets documents:

* :func:`feature_fn` / :func:`example_features` -- masked mean of one layer's hidden
  states over the non-pad tokens (INGENIOUS's representation; padding-length
  invariant because padded keys are masked in attention and excluded from the mean);
* :func:`nll_fn` -- mean token NLL per document: exact next-token NLL for a decoder
  (``model.arch=gpt``), and for an encoder a *fixed-mask pseudo-perplexity*: 15 % of
  the ordinary tokens, chosen by a per-document key (the document's index) and all
  replaced by [MASK] (the key of each document is its position in the scored list),
  averaged over ``passes`` masks -- one forward pass per pass instead of one per token;
* :class:`PerplexityScorer` -- the ``perplexity`` document scorer of the curation
  filters (:mod:`tlm_jax.data.filters`), registered on import.

Everything runs on one device under a one-device mesh, so it works inside the
pretraining loop's mesh context as well as outside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tlm_jax import sharding as shd
from tlm_jax.config import Config, ObjectiveConfig, read_config
from tlm_jax.data.filters import Doc, register_scorer
from tlm_jax.data.tokenizer import SpecialTokens, encode, load_tokenizer, padded_vocab, special_tokens
from tlm_jax.errors import TLMError
from tlm_jax.models import build_model
from tlm_jax.objectives import build_objectives
from tlm_jax.train.checkpoint import Checkpointer
from tlm_jax.train.optimizer import make_optimizer
from tlm_jax.train.state import state_shardings

PPL_SEED = 4321  # fixed masks: a document's score must not depend on when it is scored


def one_device_mesh() -> jax.sharding.Mesh:
    """A 1x1x1 mesh on the first device (model code names mesh axes in its constraints)."""
    return shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def _layers(model: nn.Module) -> int:
    return int(model.cfg.layers)


def feature_fn(model: nn.Module, pad: int, layer: int = -1) -> Callable[[Any, jax.Array], jax.Array]:
    """A jitted ``(variables, ids [B, L]) -> features [B, H]`` (float32, masked mean).

    ``layer=-1`` pools the model's final hidden states (after a final LayerNorm where
    the model has one); ``layer=l >= 0`` pools the output of layer ``l`` (0-based; the
    paper's best, layer 9 of BERT-base's 12, is ``l=8``).
    """
    n = _layers(model)
    if not -1 <= layer < n:
        raise TLMError(f"selection layer {layer} does not exist in a {n}-layer model",
                       f"use -1 (final hidden states) or 0..{n - 1}")
    name = f"layer_{layer}"

    def fn(variables: Any, ids: jax.Array) -> jax.Array:
        mask = ids != pad
        inputs = {"input_ids": ids, "attention_mask": mask}
        if layer < 0:
            h = model.apply(variables, inputs, deterministic=True, heads=())["hidden"]
        else:
            _, inter = model.apply(
                variables, inputs, deterministic=True, heads=(),
                capture_intermediates=lambda mdl, method: mdl.name == name and
                method == "__call__", mutable=["intermediates"])
            h = inter["intermediates"][name]["__call__"][0]
        m = mask[..., None].astype(jnp.float32)
        return (h.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

    return jax.jit(fn)


def nll_fn(model: nn.Module, arch: str, special: SpecialTokens, max_len: int, passes: int = 1
           ) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """A jitted ``(variables, ids [B, L], doc_index [B]) -> mean token NLL [B]`` (NaN: no tokens)."""
    pad = special.pad
    if arch == "gpt":

        def fn(variables: Any, ids: jax.Array, index: jax.Array) -> jax.Array:
            del index
            out = model.apply(variables, {"input_ids": ids, "attention_mask": ids != pad},
                              deterministic=True, heads=("lm",))
            logp = jax.nn.log_softmax(out["lm_logits"][:, :-1].astype(jnp.float32))
            labels = ids[:, 1:]
            w = (labels != pad).astype(jnp.float32)
            nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
            return (nll * w).sum(1) / jnp.where(w.sum(1) > 0, w.sum(1), jnp.nan)

        return jax.jit(fn)

    # Every selected token becomes [MASK]: the standard pseudo-perplexity input.
    ocfg = ObjectiveConfig(names=["mlm"], mask_token_prob=1.0, random_token_prob=0.0)
    mlm = build_objectives(ocfg, special, max_len)[0][0]

    def fn_mlm(variables: Any, ids: jax.Array, index: jax.Array) -> jax.Array:
        tot = jnp.zeros(ids.shape[0], jnp.float32)
        cnt = jnp.zeros(ids.shape[0], jnp.float32)
        for p in range(passes):
            inputs, targets = mlm.transform({"input_ids": ids, "index": index},
                                            jax.random.PRNGKey(PPL_SEED + p))
            out = model.apply(variables, inputs, deterministic=True, heads=("mlm",))
            logp = jax.nn.log_softmax(out["mlm_logits"].astype(jnp.float32))
            nll = -jnp.take_along_axis(logp, targets["labels"][..., None], axis=-1)[..., 0]
            tot = tot + (nll * targets["weights"]).sum(1)
            cnt = cnt + targets["weights"].sum(1)
        return tot / jnp.where(cnt > 0, cnt, jnp.nan)

    return jax.jit(fn_mlm)


def batched(fn: Callable[..., jax.Array], variables: Any, rows: Callable[[np.ndarray], np.ndarray],
            n: int, batch: int, pad: int, *, with_index: bool = False) -> np.ndarray:
    """Run ``fn`` over examples ``0..n-1`` in fixed-shape batches (the last one padded).

    ``rows(ids)`` returns the ``[len(ids), L]`` token rows of those examples.
    """
    outs = []
    with jax.set_mesh(one_device_mesh()), nn.logical_axis_rules(shd.LOGICAL_RULES):
        for lo in range(0, n, batch):
            ids = np.arange(lo, min(lo + batch, n))
            x = rows(ids)
            if len(ids) < batch:  # one compiled shape for every batch
                x = np.concatenate([x, np.full((batch - len(ids), x.shape[1]), pad, x.dtype)])
            index = np.arange(lo, lo + batch, dtype=np.int32)
            y = fn(variables, x, index) if with_index else fn(variables, x)
            outs.append(np.asarray(jax.device_get(y))[:len(ids)])
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def example_features(model: nn.Module, variables: Any, rows: Callable[[np.ndarray], np.ndarray],
                     n: int, *, pad: int, layer: int = -1, batch: int = 64) -> np.ndarray:
    """``[n, H]`` masked-mean features of examples ``0..n-1`` (see :func:`feature_fn`)."""
    return batched(feature_fn(model, pad, layer), variables, rows, n, batch, pad)


# ----------------------------------------------------------------------------- runs on disk


@dataclass
class ScoringRun:
    """A trained run loaded for scoring: config, tokenizer, model and variables (host)."""

    cfg: Config
    tokenizer: Any
    special: SpecialTokens
    model: nn.Module
    variables: dict[str, Any]
    step: int
    path: Path


def newest_step(run: Path) -> int:
    """The newest checkpoint step of a run directory (0 if none)."""
    d = Path(run) / "checkpoints"
    steps = [int(p.name) for p in d.iterdir() if p.name.isdigit()] if d.is_dir() else []
    return max(steps, default=0)


def load_scoring_run(run_dir: str | Path) -> ScoringRun:
    """Load the newest restorable checkpoint of a ``tlm pretrain`` workdir onto the host."""
    path = Path(run_dir).expanduser().resolve()
    if not (path / "config.json").is_file() or not (path / "tokenizer.json").is_file():
        raise TLMError(f"{path} is not a tlm pretrain run (config.json/tokenizer.json missing)",
                       "point the perplexity scorer's run= at a finished pretraining workdir")
    cfg = read_config(path / "config.json")
    tok = load_tokenizer(path / "tokenizer.json")
    special = special_tokens(tok)
    if not cfg.model.vocab_size:
        cfg.model.vocab_size = padded_vocab(special.vocab_size)
    objectives = build_objectives(cfg.objective, special, cfg.data.max_len)
    model = build_model(cfg.model, token_classes=max((o.token_classes for o, _ in objectives),
                                                     default=0))
    tx, _ = make_optimizer(cfg.optim, max(cfg.train.steps, 1))
    mesh = one_device_mesh()
    abstract, shardings = state_shardings(model, tx, mesh, cfg.data.max_len)
    ckpt = Checkpointer(path / "checkpoints", every=1, keep=1_000_000, async_save=False,
                        log=lambda _: None)
    try:
        restored = ckpt.restore(abstract, shardings)
    finally:
        ckpt.manager.close()
    if restored is None:
        raise TLMError(f"no restorable checkpoint in {path / 'checkpoints'}",
                       "finish (or resume) that pretraining run first")
    step, state, _, _ = restored
    variables = jax.device_get({"params": state.params, **state.model_state})
    return ScoringRun(cfg, tok, special, model, variables, int(step), path)


def encode_rows(tok: Any, special: SpecialTokens, texts: Sequence[str], max_len: int) -> np.ndarray:
    """``[CLS] ids[:max_len-2] [SEP]`` per text, padded to ``[len(texts), max_len]``."""
    out = np.full((len(texts), max_len), special.pad, np.int32)
    for i, ids in enumerate(encode(tok, list(texts))):
        body = ids[:max_len - 2]
        out[i, 0] = special.cls
        out[i, 1:1 + len(body)] = body
        out[i, 1 + len(body)] = special.sep
    return out


class PerplexityScorer:
    """The ``perplexity`` quality scorer: mean token NLL (nats) under a trained run.

    Args:
        run: the run directory of a small tlm_jax model (MLM encoder or CLM decoder).
        batch_size: documents per forward pass.
        passes: masks averaged per document for an encoder (ignored for a decoder).
        max_len: tokens scored per document (0 = the run's ``data.max_len``).
    """

    def __init__(self, run: str, batch_size: int = 64, passes: int = 1, max_len: int = 0) -> None:
        if not run:
            raise TLMError("the perplexity scorer needs a run",
                           "set data.filter_options.quality.run=RUN_DIR")
        self.path = Path(run).expanduser().resolve()
        self.batch_size, self.passes, self.max_len = int(batch_size), int(passes), int(max_len)
        self._loaded: ScoringRun | None = None
        self._fn: Callable[..., jax.Array] | None = None

    def fingerprint(self) -> str:
        cfg = (self.path / "config.json")
        tok = (self.path / "tokenizer.json")
        if not cfg.is_file() or not tok.is_file():
            raise TLMError(f"{self.path} is not a tlm pretrain run (config.json/tokenizer.json "
                           "missing)", "point the perplexity scorer's run= at a pretraining workdir")
        h = hashlib.sha256(cfg.read_bytes() + tok.read_bytes()).hexdigest()[:12]
        return (f"perplexity:{h}:step{newest_step(self.path)}:passes{self.passes}:"
                f"len{self.max_len}:v1")

    def _load(self) -> tuple[ScoringRun, Callable[..., jax.Array], int]:
        if self._loaded is None:
            self._loaded = load_scoring_run(self.path)
            r = self._loaded
            self._fn = nll_fn(r.model, r.cfg.model.arch, r.special, r.cfg.data.max_len,
                              self.passes)
        r = self._loaded
        length = self.max_len or r.cfg.data.max_len
        return r, self._fn, length  # type: ignore[return-value]

    def score(self, docs: Sequence[Doc]) -> np.ndarray:
        r, fn, length = self._load()
        rows = encode_rows(r.tokenizer, r.special, [d.text for d in docs], length)
        return batched(fn, r.variables, lambda ids: rows[ids], len(docs), self.batch_size,
                       r.special.pad, with_index=True).astype(np.float64)


def score_texts(run: str | Path, texts: Sequence[str], **options: Any) -> np.ndarray:
    """Mean token NLL of each text under ``run`` (see :class:`PerplexityScorer`)."""
    return PerplexityScorer(str(run), **options).score([Doc(t) for t in texts])


register_scorer("perplexity", PerplexityScorer)
