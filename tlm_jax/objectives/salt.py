"""SALT: small-model aided large-model training (Rawat et al., arXiv 2410.18779).

A smaller, already-trained causal LM (the *teacher*, ``objective.options.salt.teacher=RUN_DIR``)
helps early pretraining of the student (``model.arch=gpt``):

* **Soft labels.** Per token, ``loss = (1 - w) * CE(y, p_S) + w * tau^2 * KL(p_T^tau || p_S^tau)``
  with ``p^tau = softmax(logits / tau)``. ``w`` follows a schedule over the
  optimizer step: ``linear`` (default; ``kd_weight * (1 - step / kd_steps)``,
  reaching 0 at ``kd_steps``) or ``constant`` (the paper's main method:
  ``kd_weight`` until ``kd_steps``, then 0). After ``kd_steps`` the loss is plain CE.
* **Data selection (SALT_DS).** With ``select_fraction < 1``, during the KD stage
  only the top ``select_fraction`` of each batch by the teacher's "challenging
  yet learnable" score trains: per sequence, the median teacher loss over the
  tokens whose gold id is in the teacher's top ``select_top_k`` (default 10)
  predictions. A sequence with no such token scores ``-inf`` and is never
  selected. The other sequences get weight 0 (they still cost a forward pass).
  After ``kd_steps`` every sequence trains.

**Where the teacher runs.** Inside the same jitted train step: the objective's
``transform`` runs the teacher forward (deterministic, ``stop_gradient``) and
puts its logits in the targets. The teacher parameters are *closed over as
constants* of the compiled step (loaded host-side once in :meth:`SALT.setup`),
not carried in the batch or the train state: they are never updated, never
checkpointed with the student and receive no gradient. The forward is wrapped in
``lax.cond(step < kd_steps)``, so after the KD stage the compiled step does not
execute it. The current step reaches the transform as ``batch["step"]``
(:func:`~tlm_jax.objectives.base.with_step`).

The teacher must share the student's tokenizer (``data.tokenizer=TEACHER/tokenizer.json``);
the KL is over the tokenizer's ids (padding rows of either model vocabulary are ignored).

Options: ``teacher`` (required), ``kd_weight`` (0.5), ``kd_steps`` (200),
``schedule`` (linear | constant), ``temperature`` (1.0), ``select_fraction`` (1.0),
``select_top_k`` (10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tlm_jax.data.tokenizer import tokenizer_hash
from tlm_jax.errors import TLMError
from tlm_jax.objectives.base import Batch, LossTerms, register
from tlm_jax.objectives.clm import CLM, lm_logits, shift_labels
from tlm_jax.objectives.runs import require_runs


def kd_weight_schedule(step: jax.Array, weight: float, kd_steps: int, kind: str = "linear"
                       ) -> jax.Array:
    """The KD weight at ``step``: ``weight`` decaying (linear) or dropping (constant) to 0."""
    step = jnp.asarray(step, jnp.float32)
    if kd_steps <= 0:
        return jnp.zeros_like(step)
    if kind == "constant":
        return jnp.where(step < kd_steps, weight, 0.0)
    if kind == "linear":
        return weight * jnp.clip(1.0 - step / kd_steps, 0.0, 1.0)
    raise TLMError(f"unknown SALT schedule '{kind}'", "use linear or constant")


def _masked_median(x: jax.Array, keep: jax.Array) -> jax.Array:
    """Median of ``x [..., L]`` over ``keep``; ``-inf`` where nothing is kept."""
    n = keep.sum(-1)
    s = jnp.sort(jnp.where(keep, x, jnp.inf), axis=-1)
    lo = jnp.take_along_axis(s, jnp.maximum((n - 1) // 2, 0)[..., None], -1)[..., 0]
    hi = jnp.take_along_axis(s, jnp.maximum(n // 2, 0)[..., None], -1)[..., 0]
    return jnp.where(n > 0, 0.5 * (lo + hi), -jnp.inf)


def selection_scores(teacher_logits: jax.Array, labels: jax.Array, weights: jax.Array,
                     top_k: int) -> jax.Array:
    """SALT_DS score per sequence: median teacher NLL over tokens whose gold is in its top-k."""
    logits = teacher_logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
    gold = jnp.take_along_axis(logits, labels[..., None], -1)
    rank = (logits > gold).sum(-1)  # how many ids the teacher prefers to the gold one
    keep = (weights > 0) & (rank < top_k)
    return _masked_median(nll, keep)


def select_top(scores: jax.Array, fraction: float) -> jax.Array:
    """``[B]`` bool: the ``ceil(fraction * B)`` highest finite scores."""
    b = scores.shape[0]
    n = max(1, int(-(-fraction * b // 1)))
    order = jnp.argsort(-scores)
    rank = jnp.zeros((b,), jnp.int32).at[order].set(jnp.arange(b, dtype=jnp.int32))
    return (rank < n) & jnp.isfinite(scores)


def distill_terms(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
                  weights: jax.Array, kd_weight: jax.Array, vocab: int, temperature: float,
                  prefix: str) -> LossTerms:
    """``sum_t w_t [(1 - kd) CE + kd tau^2 KL(p_T || p_S)]`` with CE over the student's logits
    and KL over the first ``vocab`` ids; ``kd_weight`` is per sequence ``[B]``."""
    s = student_logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(s, -1)
    nll = -jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
    tau = float(temperature)
    ls = jax.nn.log_softmax(s[..., :vocab] / tau, -1)
    lt = jax.nn.log_softmax(teacher_logits[..., :vocab].astype(jnp.float32) / tau, -1)
    pt = jnp.exp(lt)
    kl = (tau * tau) * jnp.sum(jnp.where(pt > 0, pt * (lt - ls), 0.0), -1)
    kd = kd_weight.astype(jnp.float32)[:, None]
    per_tok = (1.0 - kd) * nll + kd * kl
    w = weights.astype(jnp.float32)
    correct = (jnp.argmax(s, -1) == labels).astype(jnp.float32)
    total = (per_tok * w).sum()
    # ``_loss`` is the plain next-token CE, so validation losses compare with ``clm`` runs and
    # across the schedule; ``_mixed`` is the trained (KD-weighted) objective; ``_kd`` the mean
    # KD weight (not ``_kd_weight``: eval summaries skip keys ending in ``_weight``).
    return LossTerms(total, w.sum(), {
        f"{prefix}_loss": (nll * w).sum(), f"{prefix}_mixed": total, f"{prefix}_kl": (kl * w).sum(),
        f"{prefix}_kd": (kd * w).sum(), f"{prefix}_accuracy": (correct * w).sum()})


@register("salt")
@dataclass
class SALT(CLM):
    """Causal LM with early distillation from a smaller teacher (see the module docstring)."""

    teacher_model: nn.Module | None = field(default=None, repr=False)
    teacher_params: Any = field(default=None, repr=False)

    def setup(self, corpus: Any) -> None:
        """Load the teacher run once and check it shares the corpus tokenizer."""
        if self.teacher_params is not None:
            return
        path = self.options.get("teacher")
        if not path:
            raise TLMError("SALT needs a teacher run", "set objective.options.salt.teacher=RUN_DIR")
        run = require_runs(self.runs, "the SALT teacher").load(str(path))
        if run.cfg.model.arch != "gpt":
            raise TLMError(f"the SALT teacher {run.path} is a '{run.cfg.model.arch}' model",
                           "use a run pretrained with model.arch=gpt")
        if tokenizer_hash(run.tokenizer) != tokenizer_hash(corpus.tokenizer):
            raise TLMError(f"the SALT teacher {run.path} has another tokenizer than the student",
                           f"set data.tokenizer={run.path / 'tokenizer.json'}")
        if run.cfg.model.max_len < self.max_len:
            raise TLMError(f"the teacher's window ({run.cfg.model.max_len}) is shorter than "
                           f"data.max_len={self.max_len}", "lower data.max_len")
        self.set_teacher(run.model, run.params)

    def set_teacher(self, model: nn.Module, params: Any) -> None:
        """Install the teacher module and its (unboxed) parameters."""
        self.teacher_model, self.teacher_params = model, params

    def _opt(self, key: str, default: Any) -> Any:
        return type(default)(self.options.get(key, default))

    def weight_at(self, step: jax.Array) -> jax.Array:
        """The KD weight schedule at ``step``."""
        return kd_weight_schedule(step, self._opt("kd_weight", 0.5), self._opt("kd_steps", 200),
                                  self._opt("schedule", "linear"))

    def teacher_logits(self, inputs: Batch) -> jax.Array:
        """The frozen teacher's next-token logits ``[B, L, V_teacher]``."""
        if self.teacher_params is None:
            raise TLMError("SALT has no teacher loaded", "build it through build_run / setup()")
        out = self.teacher_model.apply({"params": self.teacher_params}, inputs,
                                       deterministic=True, heads=("lm",))
        return jax.lax.stop_gradient(out["lm_logits"].astype(jnp.float32))

    def transform(self, batch: Batch, rng: jax.Array) -> tuple[Batch, Batch]:
        ids = batch["input_ids"]
        labels, weights = shift_labels(ids, self.special.pad)
        inputs = {"input_ids": ids, "attention_mask": ids != self.special.pad}
        step = batch["step"] if "step" in batch else jnp.zeros(ids.shape[:1], jnp.int32)
        kd = self.weight_at(step)
        in_kd = step < self._opt("kd_steps", 200)
        vt = self.teacher_model.cfg.vocab_size if self.teacher_model is not None else 0
        t_logits = jax.lax.cond(
            jnp.any(in_kd), lambda: self.teacher_logits(inputs),
            lambda: jnp.zeros((*ids.shape, vt), jnp.float32))
        frac = self._opt("select_fraction", 1.0)
        if frac < 1.0:
            scores = selection_scores(t_logits[..., :self.special.vocab_size], labels, weights,
                                      self._opt("select_top_k", 10))
            chosen = select_top(scores, frac) | ~in_kd
            weights = weights * chosen[:, None].astype(weights.dtype)
        return inputs, {"labels": labels, "weights": weights, "teacher_logits": t_logits,
                        "kd_weight": kd}

    def loss(self, outputs: dict[str, jax.Array], targets: Batch) -> LossTerms:
        return distill_terms(lm_logits(outputs, self.name), targets["teacher_logits"],
                             targets["labels"], targets["weights"], targets["kd_weight"],
                             self.special.vocab_size, self._opt("temperature", 1.0), self.name)
