"""Mixed-precision einsum: bf16 backward dots, f32 accumulation, operand-dtype cotangents."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jaxpr_dots

from tlm_jax.models import precision

SPECS = [  # (spec, x shape, w shape): a dense layer, a 2-dim contraction, the tied head
    ("abk,kn->abn", (3, 5, 8), (8, 6)),
    ("abhd,hdn->abn", (2, 5, 3, 4), (3, 4, 7)),
    ("be,ve->bv", (7, 8), (11, 8)),
]
BATCHED = [("bqhd,bkhd->bhqk", (2, 5, 3, 4), (2, 6, 3, 4)),  # attention: JAX's own transpose
           ("bhqk,bkhd->bqhd", (2, 3, 5, 6), (2, 6, 3, 4))]


def _operands(xs: tuple, ws: tuple) -> tuple[jax.Array, jax.Array]:
    kx, kw = jax.random.split(jax.random.key(0))
    # x as an activation (bf16), w as an f32 master weight.
    return (jax.random.normal(kx, xs, jnp.float32).astype(jnp.bfloat16),
            jax.random.normal(kw, ws, jnp.float32))


def _gradjaxpr_dots(spec: str, x: jax.Array, w: jax.Array, plain: bool = False) -> list:
    """The dot_generals of d(sum(y^2))/d(x, w), y = our einsum (or plain jnp.einsum)."""
    def loss(x, w):
        y = (jnp.einsum(spec, x, w.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
             if plain else precision.einsum(spec, x, w, jnp.bfloat16))
        return jnp.sum(y ** 2)

    return jaxpr_dots(jax.grad(loss, argnums=(0, 1)), x, w)


@pytest.mark.parametrize("spec,xs,ws", SPECS + BATCHED)
def test_bf16_gradients_match_f32_and_keep_operand_dtypes(spec, xs, ws) -> None:
    x, w = _operands(xs, ws)
    g = jax.random.normal(jax.random.key(1), jnp.einsum(spec, x, w).shape, jnp.float32)

    def loss(x, w, dtype):
        return jnp.sum(precision.einsum(spec, x, w, dtype) * g)

    y = precision.einsum(spec, x, w, jnp.bfloat16)
    assert y.dtype == jnp.float32
    dx, dw = jax.grad(loss, argnums=(0, 1))(x, w, jnp.bfloat16)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    # Reference: the same math in f32 on the bf16-rounded operands.
    xr, wr = x.astype(jnp.float32), w.astype(jnp.bfloat16).astype(jnp.float32)
    with jax.default_matmul_precision("highest"):
        rdx, rdw = jax.grad(lambda a, b: jnp.sum(jnp.einsum(spec, a, b) * g), argnums=(0, 1))(xr, wr)
        np.testing.assert_allclose(np.asarray(y), np.asarray(jnp.einsum(spec, xr, wr)),
                                   rtol=1e-5, atol=1e-5)
    # The cotangent is rounded to bf16 (relative error <= 2^-8), accumulation is f32.
    for got, ref in ((dx.astype(jnp.float32), rdx), (dw, rdw)):
        err = float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref))
        assert err < 1e-2, (spec, err)


@pytest.mark.parametrize("spec,xs,ws", SPECS)
def test_every_backward_dot_is_bf16_with_f32_accumulation(spec, xs, ws) -> None:
    """The point of the module: no f32 x bf16 dot (which XLA runs as an f32 matmul)."""
    x, w = _operands(xs, ws)
    dots = _gradjaxpr_dots(spec, x, w)
    assert len(dots) == 3  # forward, d-input, d-weight
    for e in dots:
        assert [v.aval.dtype for v in e.invars] == [jnp.bfloat16, jnp.bfloat16], e
        assert e.params["preferred_element_type"] == jnp.float32
    # Plain jnp.einsum with f32 accumulation (the old path) has mixed backward dots.
    plain = _gradjaxpr_dots(spec, x, w, plain=True)
    assert any(jnp.float32 in [v.aval.dtype for v in e.invars] for e in plain)


@pytest.mark.parametrize("spec,xs,ws", BATCHED)
def test_batched_contractions_keep_jaxs_transpose(spec, xs, ws) -> None:
    x, w = _operands(xs, ws)
    got, plain = _gradjaxpr_dots(spec, x, w), _gradjaxpr_dots(spec, x, w, plain=True)
    assert [[v.aval.dtype for v in e.invars] for e in got] == \
        [[v.aval.dtype for v in e.invars] for e in plain]


def test_float32_is_plain_einsum_and_bad_specs_are_refused() -> None:
    x, w = _operands((3, 8), (8, 5))
    x = x.astype(jnp.float32)
    np.testing.assert_array_equal(np.asarray(precision.einsum("ak,kn->an", x, w)),
                                  np.asarray(jnp.einsum("ak,kn->an", x, w,
                                                        preferred_element_type=jnp.float32)))
    for bad in ("...k,kn->...n", "akk,kn->an", "ak,kn->a", "ak,jn->an"):
        with pytest.raises(ValueError, match="einsum spec"):
            precision.einsum(bad, x, w, jnp.bfloat16)
    assert precision.matmul_spec(3, 3, 2) == "abc,bcd->ad"


def test_jitted_under_a_mesh_and_vmapped() -> None:
    x, w = _operands((4, 6, 8), (8, 5))

    def loss(x, w):
        return jnp.sum(precision.einsum("abk,kn->abn", x, w, jnp.bfloat16))

    g_jit = jax.jit(jax.grad(loss, argnums=1))(x, w)
    g_vmap = jax.vmap(jax.grad(loss, argnums=1), in_axes=(0, None))(x[:, None], w).sum(0)
    np.testing.assert_allclose(np.asarray(g_jit), np.asarray(g_vmap), rtol=1e-2, atol=1e-2)
