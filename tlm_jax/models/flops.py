"""Matmul FLOPs of one pretraining step, dense vs the configured projections (``model.linear``).

Counted as ``benchmarks/train_step.py`` counts them: a multiply-add is 2 FLOPs and the
backward pass is twice the forward (dX and dW), so a ``[T, n] x [n, m]`` matmul costs
``6·T·n·m`` per step. Terms:

* ``projections``: attention ``qkv`` and ``out``, MLP ``wi`` and ``wo`` over all ``B·L`` tokens;
* ``attention``: scores and context, ``3 · 4·B·L²·(heads·head_dim)`` per layer;
* ``head``: BERT's MLM transform + tied vocabulary projection at the ``P`` masked positions
  per row; GPT's tied projection at every position.

Embedding lookups, LayerNorm, softmax, activations, the convolutional front-end and the
optimizer are not counted. Under ``spdf`` the projections' matmuls (forward, dX and dW) are
scaled by the density ``1 − s`` -- what a sparse kernel (Cerebras CS-2) executes; XLA on CPU
multiplies the zeros, so wall-clock time does not drop here. Under ``sltrain`` the token
matmuls stay dense (the kernel is materialised per call, as the reference implementation does)
and rebuilding it adds ``6·n·m·r`` per matrix and step (``sltrain_rebuild``).
"""

from __future__ import annotations

import math

from tlm_jax.config import ModelConfig


def projection_shapes(cfg: ModelConfig) -> list[tuple[int, int, int]]:
    """``(matrices, n_in, m_out)`` of one layer's projections (fused QKV = 3 matrices)."""
    inner = (cfg.head_dim or cfg.hidden // cfg.heads) * cfg.heads
    return [(3, cfg.hidden, inner), (1, inner, cfg.hidden), (1, cfg.hidden, cfg.intermediate),
            (1, cfg.intermediate, cfg.hidden)]


def pretrain_flops(cfg: ModelConfig, batch: int, seq: int, predictions: int | None = None,
                   mask_rate: float = 0.15) -> dict[str, float]:
    """FLOPs of one pretraining step of ``cfg`` on ``batch × seq`` tokens (see module doc).

    ``predictions``: masked positions per row for BERT (default ``⌈mask_rate·seq⌉``).
    Returns the terms, ``total_dense`` (the same model with dense projections), ``total``
    (with ``cfg.linear``) and ``ratio = total / total_dense``.
    """
    tokens = batch * seq
    inner = (cfg.head_dim or cfg.hidden // cfg.heads) * cfg.heads
    weights = sum(g * n * m for g, n, m in projection_shapes(cfg))
    proj_dense = 6.0 * cfg.layers * weights * tokens
    attention = 3.0 * cfg.layers * 4 * batch * seq * seq * inner
    if cfg.arch == "gpt":
        head = 6.0 * cfg.vocab_size * cfg.hidden * tokens
    else:
        p = predictions if predictions is not None else math.ceil(mask_rate * seq)
        head = 6.0 * (cfg.hidden * cfg.hidden + cfg.vocab_size * cfg.hidden) * batch * p
    proj, rebuild = proj_dense, 0.0
    if cfg.linear == "spdf":
        proj = proj_dense * (1.0 - cfg.spdf_sparsity)
    elif cfg.linear == "sltrain":
        rebuild = 6.0 * cfg.layers * cfg.sltrain_rank * weights
    total_dense = proj_dense + attention + head
    total = proj + attention + head + rebuild
    return {"projections_dense": proj_dense, "projections": proj, "attention": attention,
            "head": head, "sltrain_rebuild": rebuild, "total_dense": total_dense,
            "total": total, "ratio": total / total_dense}
