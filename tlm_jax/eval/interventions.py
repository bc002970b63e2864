"""Train-Once-Answer-All metrics: what a run learnt from each experiment's inserted data.

Every experiment's outcome is a *contrast* against never-inserted controls drawn
from the same distribution, scored by the same model, so anything that shifts all
sequences alike (a different data order, another experiment's data) cancels:

* canaries (memorisation; Carlini et al.'s "secret sharer"): score = mean token
  log-likelihood of the sequence (pseudo-log-likelihood for a masked LM: each token
  masked in turn); exposure = ``log2(C + 1) - log2(rank among C controls)``;
* facts (knowledge acquisition): score = log-probability of the right object among
  the relation's candidates at the masked slot of a probe sentence.

Continual pretraining dependence testing (CPDT, Bordt & Pawelczyk) runs short
continual-pretraining runs with no insertions (``none``), each experiment alone and
all jointly, and tabulates ``D[j][i] = Y_i^{j} - Y_i^{none}``. Which test decides
"not significant" is not stated in the paper; here it is a two-sided sign-flip
permutation test on the per-item paired differences (items = an experiment's
sequences), with Bonferroni correction over the off-diagonal entries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tlm_jax import sharding as shd
from tlm_jax.data.tokenizer import encode, load_tokenizer, special_tokens
from tlm_jax.errors import TLMError
from tlm_jax.models import apply_model
from tlm_jax.train.continual import load_run_state

# ----------------------------------------------------------------------------
# Scoring sequences with a trained run
# ----------------------------------------------------------------------------


@dataclass
class RunScorer:
    """A trained run's model, ready to score token sequences (one device, fixed shapes)."""

    model: Any
    params: Any
    model_state: Any
    tokenizer: Any
    special: Any
    arch: str
    max_len: int
    mesh: Any
    step: int
    batch: int = 256
    _jitted: dict[str, Any] = field(default_factory=dict, repr=False)

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` without special tokens."""
        return encode(self.tokenizer, [text])[0]

    def _forward(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Log-softmax over the real vocabulary at ``positions`` of each row ``[N, V]``.

        For a masked LM the rows carry [MASK] at their position; for a decoder the
        logits at ``position - 1`` predict the token at ``position``.
        """
        n, length = ids.shape
        vocab = self.special.vocab_size
        pad = self.special.pad
        arch = self.arch

        def fwd(params: Any, model_state: Any, x: Any, pos: Any) -> Any:
            inputs = {"input_ids": x, "attention_mask": x != pad}
            if arch == "gpt":
                out, _ = apply_model(self.model, {"params": params, **model_state}, inputs,
                                     heads=("lm",))
                logits = jnp.take_along_axis(out["lm_logits"], (pos - 1)[:, None, None], axis=1)
            else:
                inputs["masked_positions"] = pos[:, None]
                out, _ = apply_model(self.model, {"params": params, **model_state}, inputs,
                                     heads=("mlm",))
                logits = out["mlm_logits"]
            return jax.nn.log_softmax(logits[:, 0, :vocab].astype(jnp.float32), axis=-1)

        rows = []
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
            f = self._jitted.setdefault("fwd", jax.jit(fwd))
            for s in range(0, n, self.batch):
                x = ids[s:s + self.batch]
                p = positions[s:s + self.batch]
                real = len(x)
                if real < self.batch:  # one compiled shape
                    x = np.concatenate([x, np.full((self.batch - real, length), pad, np.int32)])
                    p = np.concatenate([p, np.ones(self.batch - real, np.int32)])
                rows.append(np.asarray(f(self.params, self.model_state, x, p))[:real])
        return np.concatenate(rows) if rows else np.zeros((0, vocab), np.float32)

    def _rows(self, bodies: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
        """Rows ``[CLS] [SEP] body [SEP] [SEP] [PAD]...``: the inserted window at an example's start."""
        sp = self.special
        longest = max((len(b) for b in bodies), default=0) + 4
        if longest > self.max_len:
            raise TLMError(f"a probe is {longest} tokens, longer than the run's max_len "
                           f"{self.max_len}", "shorten it")
        length = min(self.max_len, 8 * math.ceil(longest / 8))
        out = np.full((len(bodies), length), sp.pad, np.int32)
        for i, b in enumerate(bodies):
            row = [sp.cls, sp.sep, *np.asarray(b).tolist(), sp.sep, sp.sep]
            out[i, :len(row)] = row
        return out, 2  # offset of the body in a row

    def sequence_scores(self, texts: Sequence[str]) -> np.ndarray:
        """Mean token log-likelihood of each text (masked LM: pseudo-log-likelihood)."""
        bodies = [self.encode(t) for t in texts]
        rows, off = self._rows(bodies)
        ids, pos, owner, target = [], [], [], []
        for i, b in enumerate(bodies):
            for j, tok in enumerate(np.asarray(b).tolist()):
                r = rows[i].copy()
                if self.arch != "gpt":
                    r[off + j] = self.special.mask
                ids.append(r)
                pos.append(off + j)
                owner.append(i)
                target.append(tok)
        if not ids:
            return np.zeros(len(texts))
        lp = self._forward(np.stack(ids), np.asarray(pos, np.int32))
        tok_lp = lp[np.arange(len(target)), np.asarray(target)]
        sums = np.bincount(np.asarray(owner), weights=tok_lp, minlength=len(texts))
        counts = np.bincount(np.asarray(owner), minlength=len(texts))
        return sums / np.maximum(counts, 1)

    def choice_logprobs(self, prompts: Sequence[str], candidates: Sequence[str],
                        slot: str = "{o}") -> np.ndarray:
        """``[N, C]`` log-probabilities over ``candidates`` at the ``slot`` of each prompt."""
        cand_ids = []
        for c in candidates:
            ids = self.encode(c)
            if len(ids) != 1:
                raise TLMError(f"candidate '{c}' is {len(ids)} tokens in this vocabulary",
                               "use candidates that are single tokens")
            cand_ids.append(int(ids[0]))
        bodies, where = [], []
        for p in prompts:
            if p.count(slot) != 1:
                raise TLMError(f"probe '{p}' must contain {slot} once", "fix the probe template")
            left, right = p.split(slot)
            lt = self.encode(left) if left.strip() else np.zeros(0, np.int32)
            rt = self.encode(right) if right.strip() else np.zeros(0, np.int32)
            bodies.append(np.concatenate([lt, [self.special.mask], rt]).astype(np.int32))
            where.append(len(lt))
        rows, off = self._rows(bodies)
        lp = self._forward(rows, np.asarray(where, np.int32) + off)
        sub = lp[:, cand_ids]
        return sub - np.logaddexp.reduce(sub, axis=1, keepdims=True)


def load_scorer(run: str | Path, *, step: int = 0, batch: int = 256,
                log: Callable[[str], None] = print) -> RunScorer:
    """A :class:`RunScorer` of run ``run``'s checkpoint (newest, or ``step``) on one device."""
    mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    cfg, model, params, model_state, got = load_run_state(run, mesh, step=step, log=log)
    tok = load_tokenizer(Path(run) / "tokenizer.json")
    return RunScorer(model, params, model_state, tok, special_tokens(tok), cfg.model.arch,
                     cfg.data.max_len, mesh, got, batch)


# ----------------------------------------------------------------------------
# Per-experiment outcomes
# ----------------------------------------------------------------------------


def exposure(inserted: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """Carlini et al.'s exposure of each inserted item against ``controls`` (higher = memorised).

    ``rank`` = 1 + number of controls scoring at least as high; exposure =
    ``log2(C + 1) - log2(rank)``: 0 when every control beats it, ``log2(C + 1)`` when none does.
    """
    c = np.sort(np.asarray(controls, np.float64))
    ins = np.asarray(inserted, np.float64)
    rank = 1 + (len(c) - np.searchsorted(c, ins, side="left"))
    return np.log2(len(c) + 1) - np.log2(rank)


def auc(inserted: np.ndarray, controls: np.ndarray) -> float:
    """P(inserted item scores above a control) (+ half the ties): 0.5 = nothing learnt."""
    a, b = np.asarray(inserted, np.float64)[:, None], np.asarray(controls, np.float64)[None, :]
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float((a > b).mean() + 0.5 * (a == b).mean())


def contrast(inserted: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """Per inserted item: its score minus the mean control score (the experiments' unit)."""
    return np.asarray(inserted, np.float64) - float(np.mean(controls))


# ----------------------------------------------------------------------------
# CPDT: dependence matrix and its significance
# ----------------------------------------------------------------------------


def sign_flip_pvalue(diffs: np.ndarray, *, permutations: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of ``mean(diffs) = 0`` by random sign flips (exact when n <= 14)."""
    d = np.asarray(diffs, np.float64)
    d = d[np.isfinite(d)]
    n = len(d)
    if n == 0:
        return float("nan")
    obs = abs(d.mean())
    if n <= 14:
        signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(permutations, n))
    null = np.abs((signs * d).mean(axis=1))
    return float((np.sum(null >= obs - 1e-12) + (0 if n <= 14 else 1))
                 / (len(null) + (0 if n <= 14 else 1)))


def dependence_matrix(items: dict[str, dict[str, np.ndarray]], experiments: Sequence[str], *,
                      baseline: str = "none", alpha: float = 0.05) -> dict[str, Any]:
    """CPDT's ``D[row][col] = Y_col^{row} - Y_col^{baseline}`` with per-entry p-values.

    ``items[condition][experiment]`` holds that experiment's per-item outcomes (contrasts,
    same items in the same order in every condition) after the run of ``condition``:
    ``baseline`` (no insertions), each experiment alone (named as the experiment), ``joint``
    and any others (e.g. a second baseline seed). Rows are every condition but the
    baseline. An off-diagonal entry is flagged when its p-value is below ``alpha`` divided
    by the number of off-diagonal entries of single-experiment rows (Bonferroni).
    """
    if baseline not in items:
        raise TLMError(f"no '{baseline}' condition among {sorted(items)}", "run the baseline too")
    rows = [c for c in items if c != baseline]
    base = items[baseline]
    off = [(r, c) for r in rows if r in experiments for c in experiments if c != r]
    threshold = alpha / max(len(off), 1)
    D, P, flagged = {}, {}, []
    for r in rows:
        D[r], P[r] = {}, {}
        for c in experiments:
            diffs = np.asarray(items[r][c], np.float64) - np.asarray(base[c], np.float64)
            D[r][c] = float(np.mean(diffs))
            P[r][c] = sign_flip_pvalue(diffs)
            if (r, c) in off and P[r][c] < threshold:
                flagged.append([r, c])
    joint = {}
    if "joint" in items:
        for c in experiments:
            if c in items:  # the joint run against the experiment's own run
                diffs = np.asarray(items["joint"][c], np.float64) - np.asarray(items[c][c],
                                                                               np.float64)
                joint[c] = {"difference": float(np.mean(diffs)), "p": sign_flip_pvalue(diffs)}
    return {"rows": rows, "columns": list(experiments), "baseline": baseline, "D": D, "p": P,
            "bonferroni_threshold": threshold, "flagged": flagged, "joint_vs_alone": joint,
            "independent": not flagged}


__all__ = ["RunScorer", "auc", "contrast", "dependence_matrix", "exposure", "load_scorer",
           "sign_flip_pvalue"]
