"""Mixed-precision matmuls whose backward pass stays in the compute dtype.

A forward dot of bf16 inputs with ``preferred_element_type=float32`` is what XLA runs fast
(f32 accumulation). Its default transpose, however, receives a float32 cotangent and
contracts it with the saved bf16 operand: a mixed f32 x bf16 dot, which XLA upcasts to an
f32 matmul. Measured on an H200 (benchmarks/step_breakdown.py, BERT-base shape, batch
256 x 128, bf16): forward 27 ms, backward 78 ms, where bf16 backward matmuls would take
about twice the forward -- consistent with f32/TF32 backward matmuls. :func:`einsum` keeps
both backward dots (d-input and d-weight) in the compute dtype with f32 accumulation, as
torch autocast and the usual mixed-precision recipes do, and returns each cotangent in its
operand's own dtype (f32 master weights get f32 gradients).

In float32 it is plain :func:`jax.numpy.einsum` (no custom VJP), so f32 runs are unchanged.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp


def _parse(spec: str) -> tuple[str, str, str]:
    inputs, out = spec.replace(" ", "").split("->")
    a, b = inputs.split(",")
    if "." in spec:
        raise ValueError(f"einsum spec {spec!r}: write the dims out (no ellipsis)")
    for name, s in (("first", a), ("second", b), ("output", out)):
        if len(set(s)) != len(s):
            raise ValueError(f"einsum spec {spec!r}: repeated index in the {name} operand")
    # Each operand's index must be contracted with the other or kept: the transposes below
    # are then einsums of the same form (an index summed within one operand is not).
    for s, other in ((a, b), (b, a)):
        lonely = set(s) - set(other) - set(out)
        if lonely:
            raise ValueError(f"einsum spec {spec!r}: index {sorted(lonely)} is summed within "
                             "one operand")
    return a, b, out


@partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _mp_einsum(spec: str, x: jax.Array, w: jax.Array, dtype: Any) -> jax.Array:
    return jnp.einsum(spec, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def _mp_fwd(spec: str, x: jax.Array, w: jax.Array, dtype: Any
            ) -> tuple[jax.Array, tuple[jax.Array, jax.Array, Any, Any]]:
    xc, wc = x.astype(dtype), w.astype(dtype)
    y = jnp.einsum(spec, xc, wc, preferred_element_type=jnp.float32)
    # Residuals in the compute dtype (half the memory of f32 copies); the zero-size dtype
    # markers carry the operands' own dtypes to the backward pass.
    return y, (xc, wc, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _mp_bwd(spec: str, dtype: Any, res: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    xc, wc, x_marker, w_marker = res
    a, b, out = _parse(spec)
    gc = g.astype(dtype)
    dx = jnp.einsum(f"{out},{b}->{a}", gc, wc, preferred_element_type=jnp.float32)
    dw = jnp.einsum(f"{a},{out}->{b}", xc, gc, preferred_element_type=jnp.float32)
    return dx.astype(x_marker.dtype), dw.astype(w_marker.dtype)


_mp_einsum.defvjp(_mp_fwd, _mp_bwd)


def einsum(spec: str, x: jax.Array, w: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """``einsum(spec, x, w)`` in ``dtype`` with f32 accumulation; the result is float32.

    For a low-precision ``dtype`` the backward dots of an unbatched contraction (no index in
    both operands and the output: dense layers, the tied vocabulary projection) also run in
    ``dtype`` (the cotangent is rounded to it) with f32 accumulation. ``spec`` names two
    operands, no ellipsis, and every index of an operand appears in the other operand or
    in the output.
    """
    a, b, out = _parse(spec)
    if jnp.dtype(dtype) == jnp.float32 or set(a) & set(b) & set(out):
        # Batched contractions (attention) keep JAX's own transpose: XLA:CPU runs some of
        # their bf16 x bf16 -> f32 backward layouts in neither its YNNPACK fusion nor its
        # generic dot ("Unsupported element type for DotThunk"). They are ~3 % of BERT's
        # FLOPs.
        return jnp.einsum(spec, x.astype(dtype), w.astype(dtype),
                          preferred_element_type=jnp.float32)
    return _mp_einsum(spec, x, w, jnp.dtype(dtype))


def matmul_spec(x_ndim: int, w_ndim: int, contract: int) -> str:
    """The einsum spec contracting the last ``contract`` dims of x with the first of w."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    lead = letters[: x_ndim - contract]
    k = letters[x_ndim - contract: x_ndim]
    n = letters[x_ndim: x_ndim + w_ndim - contract]
    return f"{lead}{k},{k}{n}->{lead}{n}"
