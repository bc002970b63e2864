"""The plateau guard: has a pretrained model learned more than token frequencies?

Early in pretraining a masked (or causal) language model first learns how often each
token occurs and then sits on a *plateau*: its validation loss stays near the loss
of a model that ignores the context and predicts every token by its frequency (the
unigram model), and its features carry little information a classifier can use.
Fine-tuned from there, the pretrained weights are often *worse* than a random
initialisation, so a negative "pretraining gap" measured on such a model says
something about the budget, not about pretraining.

The guard compares a model's validation token loss ``L`` (nats per predicted token:
``mlm_loss``, ``clm_loss``, ...) with the unigram loss ``U`` of the same corpus --
the cross-entropy of the validation tokens under the training-token frequencies
(add-one smoothed), which is what a frequency-only model scores:

    on the plateau  <=>  L > U - margin           (default margin: 1 nat)

A margin of one nat means the model must give the true token, on geometric
average, ``e`` (2.7x) the probability the frequency model gives it. Calibration on
the Wikipedia excerpt (vocabulary 8,192, ``U`` = 7.00, the one-layer ``cpu``
preset model): at validation MLM loss 6.75, 6.52, 6.36 and 6.33 (0.25-0.67 nats
below ``U``) the pretrained model fine-tuned 9-27 points *below* its random-init
twin on AG News; at 5.49 (1.51 below) it was 2.6 points above, at 4.96 (2.04 below)
5.5 points above, the 95 % CI excluding 0. One nat sits between the last "hurts"
and the first "helps" point. Special tokens are excluded from ``U`` because the
objectives never predict them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlm_jax.data.cache import load_split
from tlm_jax.errors import TLMError

#: Nats below the unigram loss a model's validation loss must reach to count as
#: having left the plateau (module docstring: why one nat).
PLATEAU_MARGIN = 1.0

#: Validation-metric keys that are a cross-entropy over the vocabulary, in the order a
#: model's loss is picked (a model trained with MLM + SLM is judged by its MLM loss).
TOKEN_LOSS_KEYS = ("mlm_loss", "clm_loss", "slm_loss", "conditional_loss")


def token_counts(tokens: np.ndarray, vocab_size: int, exclude: Sequence[int] = ()) -> np.ndarray:
    """How often each id in ``[0, vocab_size)`` occurs in ``tokens``; ``exclude`` ids count 0."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64).ravel(), minlength=vocab_size)
    counts = counts[:vocab_size].astype(np.float64)
    if len(exclude):
        counts[np.asarray(list(exclude), dtype=np.int64)] = 0.0
    return counts


def unigram_entropy(tokens: np.ndarray, vocab_size: int, exclude: Sequence[int] = ()) -> float:
    """Entropy (nats) of the token-frequency distribution of ``tokens``."""
    c = token_counts(tokens, vocab_size, exclude)
    if c.sum() == 0:
        raise TLMError("no tokens to measure a unigram entropy on",
                       "pass a non-empty token array (special tokens are excluded)")
    p = c[c > 0] / c.sum()
    return float(-(p * np.log(p)).sum())


def unigram_loss(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int,
                 exclude: Sequence[int] = (), alpha: float = 1.0) -> float:
    """Cross-entropy (nats/token) of ``eval_tokens`` under the frequencies of ``train_tokens``.

    The loss of a model that ignores the context and predicts each token by how
    often it occurs in training: add-``alpha`` smoothing over the ``vocab_size -
    len(exclude)`` predictable ids, so a token never seen in training costs a
    finite amount. ``exclude`` (special ids) is neither predicted nor scored.
    """
    c = token_counts(train_tokens, vocab_size, exclude)
    e = token_counts(eval_tokens, vocab_size, exclude)
    if e.sum() == 0:
        raise TLMError("no evaluation tokens for the unigram loss",
                       "pass a non-empty evaluation split (special tokens are excluded)")
    n_ids = vocab_size - len(set(int(i) for i in exclude if 0 <= int(i) < vocab_size))
    p = (c + alpha) / (c.sum() + alpha * n_ids)
    keep = e > 0
    return float(-(e[keep] * np.log(p[keep])).sum() / e.sum())


def cache_unigram(cache_dir: str | Path, exclude: Sequence[int], vocab_size: int | None = None
                  ) -> dict[str, Any]:
    """Unigram loss and entropy of a token cache (``tlm_jax.data.cache`` layout).

    The validation split is scored under the training split's frequencies; when the
    cache has no validation tokens the training split scores itself (= the entropy
    plus the smoothing cost).
    """
    d = Path(cache_dir)
    try:
        meta = json.loads((d / "meta.json").read_text())
        train = load_split(d, "train", meta["dtype"])
        val = load_split(d, "val", meta["dtype"]) if (d / "val.idx.npy").is_file() else None
    except (OSError, ValueError, KeyError) as e:
        raise TLMError(f"cannot read the token cache {d} ({e})",
                       "re-run the pretraining command (it rebuilds the cache)") from e
    tr = np.asarray(train.tokens[:train.num_tokens])
    ev = np.asarray(val.tokens[:val.num_tokens]) if val is not None and val.num_tokens else tr
    size = int(vocab_size or (int(tr.max()) + 1 if len(tr) else 0))
    return {"unigram_loss": unigram_loss(tr, ev, size, exclude),
            "unigram_entropy": unigram_entropy(tr, size, exclude),
            "train_tokens": int(len(tr)), "eval_tokens": int(len(ev)), "vocab_size": size}


@dataclass(frozen=True)
class PlateauVerdict:
    """Whether one model has left the plateau, with the numbers that decided it."""

    on_plateau: bool | None  # None: not judged (no token loss or no baseline)
    val_loss: float | None
    unigram_loss: float | None
    margin: float
    threshold: float | None  # unigram_loss - margin
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-plain form (for report.json)."""
        return asdict(self)


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def plateau_verdict(val_loss: float | None, unigram: float | None,
                    margin: float = PLATEAU_MARGIN) -> PlateauVerdict:
    """On the plateau when ``val_loss > unigram - margin`` (module docstring: the criterion).

    A missing or non-finite ``val_loss`` or ``unigram`` gives ``on_plateau=None``
    (not judged) rather than a guess.
    """
    v, u = _finite(val_loss), _finite(unigram)
    if v is None or u is None:
        what = "validation token loss" if v is None else "unigram baseline"
        return PlateauVerdict(None, v, u, margin, None, f"not judged: no {what}")
    thr = u - margin
    if v > thr:
        return PlateauVerdict(True, v, u, margin, thr,
                              f"on the plateau: val loss {v:.3f} > {thr:.3f} "
                              f"(unigram {u:.3f} - {margin:g})")
    return PlateauVerdict(False, v, u, margin, thr,
                          f"left the plateau: val loss {v:.3f} <= {thr:.3f} "
                          f"(unigram {u:.3f} - {margin:g})")


def token_loss(final_val: Mapping[str, Any] | None) -> tuple[str, float] | None:
    """The ``(key, value)`` of the first :data:`TOKEN_LOSS_KEYS` entry in a validation record."""
    for k in TOKEN_LOSS_KEYS:
        v = _finite((final_val or {}).get(k))
        if v is not None:
            return k, v
    return None
