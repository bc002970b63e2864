"""Sparse and low-rank projections for pretraining: SLTrain and SPDF (``model.linear``).

Both replace the attention (``qkv``, ``out``) and MLP (``wi``, ``wo``) projections built by
:func:`tlm_jax.models.layers.projection` -- the layers both papers name (LLaMA's q, k, v, o,
up, down; Cerebras' ``proj_[qkv]``, attention output and FFN). Embeddings, the MLM head,
LayerNorms and biases stay dense. The fused ``[embed, 3, heads, kv]`` QKV kernel counts as
three matrices (q, k, v): each gets its own factors and support / mask.

Layout: our kernels are ``[*in, *out]`` (the papers' ``Wᵀ``, ``W ∈ R^{out×in}``). ``A`` is
stored as ``[*in, rank]`` (the paper's ``Aᵀ``) and ``B`` as ``[rank, *out]`` (its ``Bᵀ``), and
flat positions index the row-major ``[n_in, m_out]`` kernel of one matrix. A uniform random
support has the same distribution in either orientation.

**SLTrain** (Han et al., NeurIPS 2024): ``W = (alpha/rank)·B·A + S``. ``A`` starts
U(±1/√n) (PyTorch's kaiming_uniform(a=√5)), ``B`` at 0, the ``nnz = ⌊density·n·m⌋`` values of
``S`` U(±1/√n): these three are the trained parameters. The support of ``S`` (``index``,
``int32 [matrices, nnz]``: distinct, sorted flat positions drawn uniformly from the ``params``
init RNG, so it follows ``train.seed`` and differs between layers) is a buffer in the
``sparse`` variable collection: :func:`tlm_jax.models.apply_model` never makes it mutable,
the train state keeps it in ``model_state`` and checkpoints it, so it is restored bit for
bit. The forward builds the dense kernel for the call, as the reference kernel does, so
autodiff yields exactly ``dB = (α/r)·G·Aᵀ``, ``dA = (α/r)·Bᵀ·G`` and ``dv = G.flat[I]``.

**SPDF** (Thangarasa et al., UAI 2023): a static mask ``M`` per matrix with exactly
``⌊sparsity·numel⌋`` zeros at random positions (init RNG), also in the ``sparse``
collection (``bool``, sharded like its kernel). The kernel starts as ``W ⊙ M`` and the
forward uses ``W ⊙ M``: the gradient of a masked entry is exactly 0, so AdamW (its moments
stay 0, and the decoupled decay of a zero weight is zero) never revives it.

**Fine-tuning densifies** (:func:`densify_variables`): an SPDF kernel is ``W ⊙ M`` (the
pruned weights restart at zero and are trainable); an SLTrain layer becomes the dense
kernel ``(α/r)·A·B + scatter(values)`` it computes. The fine-tuned model is then the same
plain dense model for a dense, SLTrain or SPDF run, and computes the same function as the
pretrained one. We densify SLTrain as well (rather than fine-tune its factors) because its
claim is about pretraining memory, a fine-tune of these sizes fits densely, and it lets
``tlm finetune``, ``tlm generate`` and ``tlm export-hf`` read every run the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tlm_jax.config import ModelConfig
from tlm_jax.models.linear import DEFAULT_INIT, Dtype, LinearSpec, matmul
from tlm_jax.sharding import unbox

SPARSE_COLLECTION = "sparse"
SLTRAIN_PARAMS = frozenset({"A", "B", "values"})


def linear_spec(cfg: ModelConfig) -> LinearSpec | None:
    """The projections' :class:`LinearSpec` of ``cfg`` (``None`` for dense)."""
    if cfg.linear == "dense":
        return None
    return LinearSpec(cfg.linear, cfg.sltrain_rank, cfg.sltrain_alpha, cfg.sltrain_density,
                      cfg.spdf_sparsity)


def _symmetric_uniform(bound: float) -> Callable[..., jax.Array]:
    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, tuple(shape), dtype, -bound, bound)

    return init


# ----------------------------------------------------------------------------- SLTrain


def sltrain_nnz(n: int, m: int, density: float) -> int:
    """Entries of ``S`` for an ``n × m`` matrix: ``⌊density·n·m⌋``."""
    return int(math.floor(density * n * m))


def sltrain_param_count(n: int, m: int, rank: int, density: float) -> int:
    """Trained scalars of one SLTrain matrix (no bias): ``r(m + n) + ⌊δ·m·n⌋`` (dense: ``mn``)."""
    return rank * (n + m) + sltrain_nnz(n, m, density)


def sltrain_support(key: jax.Array, matrices: int, size: int, nnz: int) -> jax.Array:
    """``int32 [matrices, nnz]``: per matrix, ``nnz`` distinct sorted positions in ``[0, size)``."""
    def one(k: jax.Array) -> jax.Array:
        return jnp.sort(jax.random.choice(k, size, (nnz,), replace=False)).astype(jnp.int32)

    return jax.vmap(one)(jax.random.split(key, matrices))


def sltrain_kernel(a: jax.Array, b: jax.Array, values: jax.Array, index: jax.Array,
                   scale: float) -> jax.Array:
    """The dense ``[*in, *out]`` kernel ``scale·A·B + scatter(values at index)``.

    Shapes (``g`` = ``values.shape[0]`` matrices): ``g == 1``: ``a [*in, r]``,
    ``b [r, *out]``; ``g > 1``: ``a [*in, g, r]``, ``b [g, r, *rest]`` with ``out = (g, *rest)``.
    """
    g, r = values.shape[0], a.shape[-1]
    in_shape = a.shape[:-1] if g == 1 else a.shape[:-2]
    rest = b.shape[1:] if g == 1 else b.shape[2:]
    features = tuple(rest) if g == 1 else (g, *rest)
    n, m = math.prod(in_shape), math.prod(rest)
    low = jnp.einsum("ngr,grm->gnm", a.reshape(n, g, r), b.reshape(g, r, m)) * scale
    flat = low.reshape(g, n * m).at[jnp.arange(g)[:, None], index].add(
        values.astype(low.dtype), indices_are_sorted=True, unique_indices=True)
    return flat.reshape(g, n, m).transpose(1, 0, 2).reshape(*in_shape, *features)


class SLTrainDense(nn.Module):
    """A :class:`~tlm_jax.models.linear.Dense` whose kernel is ``(α/r)·A·B + S`` (see module doc).

    Attributes:
        features / axes / contract: as ``Dense``.
        groups: the first output dim holds that many separate matrices (fused QKV: 3).
        rank / alpha / density: ``r``, ``α`` and ``δ`` of the paper.
    """

    features: Sequence[int]
    axes: Sequence[str | None]
    contract: int = 1
    groups: int = 1
    rank: int = 32
    alpha: float = 8.0
    density: float = 0.03
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = tuple(x.shape[x.ndim - self.contract:])
        feats, g = tuple(self.features), self.groups
        in_axes, out_axes = tuple(self.axes[:self.contract]), tuple(self.axes[self.contract:])
        if g > 1 and feats[0] != g:
            raise ValueError(f"groups={g} needs features[0] == {g}, got {feats}")
        gshape, gaxis = ((g,), out_axes[:1]) if g > 1 else ((), ())
        rest, rest_axes = (feats[1:], out_axes[1:]) if g > 1 else (feats, out_axes)
        n, m = math.prod(in_shape), math.prod(rest)
        bound = 1.0 / math.sqrt(n)
        a = self.param("A", nn.with_logical_partitioning(_symmetric_uniform(bound),
                                                         (*in_axes, *gaxis, "rank")),
                       (*in_shape, *gshape, self.rank), self.param_dtype)
        b = self.param("B", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                         (*gaxis, "rank", *rest_axes)),
                       (*gshape, self.rank, *rest), self.param_dtype)
        nnz = sltrain_nnz(n, m, self.density)
        index = self.variable(SPARSE_COLLECTION, "index", nn.with_logical_partitioning(
            lambda: sltrain_support(self.make_rng("params"), g, n * m, nnz), ("stack", "nnz")))
        values = self.param("values", nn.with_logical_partitioning(_symmetric_uniform(bound),
                                                                   ("stack", "nnz")),
                            (g, nnz), self.param_dtype)
        kernel = sltrain_kernel(a, b, values, index.value, self.alpha / self.rank)
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                   out_axes), feats,
                              self.param_dtype)
        return matmul(x, kernel, self.contract, self.dtype, bias)


# ----------------------------------------------------------------------------- SPDF


def spdf_mask(key: jax.Array, in_shape: Sequence[int], features: Sequence[int], groups: int,
              sparsity: float) -> jax.Array:
    """``bool [*in, *out]``: per matrix exactly ``⌊sparsity·numel⌋`` False entries at random."""
    feats = tuple(features)
    n, m = math.prod(in_shape), math.prod(feats) // groups
    numel = n * m
    zeros = int(math.floor(sparsity * numel))

    def one(k: jax.Array) -> jax.Array:
        drop = jax.random.permutation(k, numel)[:zeros]
        return jnp.ones((numel,), jnp.bool_).at[drop].set(False)

    flat = jax.vmap(one)(jax.random.split(key, groups))
    return flat.reshape(groups, n, m).transpose(1, 0, 2).reshape(*in_shape, *feats)


class SPDFDense(nn.Module):
    """A :class:`~tlm_jax.models.linear.Dense` with a static sparsity mask (see module doc).

    The parameter tree equals ``Dense``'s (``kernel``, ``bias``); the mask lives in the
    ``sparse`` collection with the kernel's logical axes.
    """

    features: Sequence[int]
    axes: Sequence[str | None]
    contract: int = 1
    groups: int = 1
    sparsity: float = 0.75
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = tuple(x.shape[x.ndim - self.contract:])
        feats, axes = tuple(self.features), tuple(self.axes)
        mask = self.variable(SPARSE_COLLECTION, "mask", nn.with_logical_partitioning(
            lambda: spdf_mask(self.make_rng("params"), in_shape, feats, self.groups,
                              self.sparsity), axes)).value

        def init(key: jax.Array, shape: Sequence[int], dtype: Dtype) -> jax.Array:
            return self.kernel_init(key, shape, dtype) * mask.astype(dtype)

        kernel = self.param("kernel", nn.with_logical_partitioning(init, axes),
                            (*in_shape, *feats), self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(
                nn.initializers.zeros_init(), axes[self.contract:]), feats, self.param_dtype)
        return matmul(x, kernel * mask.astype(kernel.dtype), self.contract, self.dtype, bias)


# ----------------------------------------------------------------------------- building


def sparse_projection(spec: LinearSpec, features: Sequence[int], axes: Sequence[str | None], *,
                      name: str, contract: int = 1, groups: int = 1,
                      dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                      kernel_init: Callable = DEFAULT_INIT) -> nn.Module:
    """The SLTrain / SPDF layer for ``spec`` (called by :func:`layers.projection`)."""
    if spec.kind == "sltrain":
        # SLTrain draws its own initial values (the paper's), not the model's kernel_init.
        return SLTrainDense(tuple(features), tuple(axes), contract=contract, groups=groups,
                            rank=spec.rank, alpha=spec.alpha, density=spec.density,
                            dtype=dtype, param_dtype=param_dtype, name=name)
    if spec.kind == "spdf":
        return SPDFDense(tuple(features), tuple(axes), contract=contract, groups=groups,
                         sparsity=spec.sparsity, dtype=dtype, param_dtype=param_dtype,
                         kernel_init=kernel_init, name=name)
    raise ValueError(f"unknown linear kind {spec.kind!r}")


# ----------------------------------------------------------------------------- densifying


def densify_variables(cfg: ModelConfig, params: dict[str, Any], model_state: dict[str, Any]
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The variables of the *dense* model of ``cfg``'s shape that computes the same function.

    SLTrain layers become ``{"kernel", "bias"}`` with the kernel they compute; SPDF kernels
    are multiplied by their mask (pruned weights are exactly 0 and become trainable). The
    ``sparse`` collection is dropped; other collections (BatchNorm statistics) are kept.
    Returns host (numpy) arrays; a dense model's variables come back unchanged.
    """
    buffers = (model_state or {}).get(SPARSE_COLLECTION)
    if not buffers:
        return params, model_state
    scale = cfg.sltrain_alpha / cfg.sltrain_rank

    def walk(p: Any, s: Any) -> Any:
        if not isinstance(p, dict):
            return p
        s = s if isinstance(s, dict) else {}
        if set(p) >= SLTRAIN_PARAMS and "index" in s:
            kernel = sltrain_kernel(jnp.asarray(p["A"]), jnp.asarray(p["B"]),
                                    jnp.asarray(p["values"]), jnp.asarray(s["index"]), scale)
            out = {"kernel": np.asarray(kernel, dtype=np.asarray(p["A"]).dtype)}
            if "bias" in p:
                out["bias"] = np.asarray(p["bias"])
            return out
        if "kernel" in p and "mask" in s:
            kernel = np.asarray(p["kernel"])
            return {**{k: np.asarray(v) for k, v in p.items()},
                    "kernel": kernel * np.asarray(s["mask"]).astype(kernel.dtype)}
        return {k: walk(v, s.get(k)) for k, v in p.items()}

    dense_state = {k: v for k, v in model_state.items() if k != SPARSE_COLLECTION}
    return walk(params, buffers), dense_state


def projection_param_count(params: Any) -> int:
    """Scalars in the attention and MLP projections (``qkv``/``out``/``wi``/``wo``) of a tree."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(unbox(params)):
        keys = [getattr(k, "key", None) for k in path]
        if any(a in ("attention", "mlp") and b in ("qkv", "out", "wi", "wo")
               for a, b in zip(keys, keys[1:], strict=False)):
            total += math.prod(leaf.shape)
    return total
