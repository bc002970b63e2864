"""The hand-written attention backward against JAX's own differentiation of the same math."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import attention_inputs, jaxpr_dots, reference_attention

from tlm_jax.models.attention import attention, attention_rows

B, S, H, D = 2, 7, 3, 8


def _inputs(causal: bool, dropout: bool):
    qkv, _, allowed, keep, g, key = attention_inputs((B, S, H, D), 3, 0.8, causal, dropout)
    return qkv, allowed, keep, g, key


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
def test_f32_output_and_gradient_match_autodiff(causal: bool, dropout: bool) -> None:
    qkv, allowed, keep, g, _ = _inputs(causal, dropout)
    ours = lambda x: attention(x, allowed, keep=keep, keep_prob=0.8)  # noqa: E731
    ref = lambda x: reference_attention(x, allowed, keep, 0.8)  # noqa: E731
    y, vjp = jax.vjp(ours, qkv)
    y_ref, vjp_ref = jax.vjp(ref, qkv)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    (dq,), (dq_ref,) = vjp(g), vjp_ref(g)
    assert dq.dtype == jnp.float32
    np.testing.assert_allclose(dq, dq_ref, rtol=1e-4, atol=1e-5)


def test_masked_keys_get_no_gradient_and_do_not_leak() -> None:
    qkv, allowed, _, g, _ = _inputs(False, False)
    (dq,) = jax.vjp(lambda x: attention(x, allowed), qkv)[1](g)
    # Keys/values of the padded positions of example 1 receive exactly zero gradient ...
    assert float(jnp.abs(dq[1, S - 3:, 1:]).max()) == 0.0
    # ... and changing them changes no output.
    moved = qkv.at[1, S - 3:].add(5.0)
    np.testing.assert_allclose(attention(moved, allowed)[:, : S - 3],
                               attention(qkv, allowed)[:, : S - 3], rtol=1e-6, atol=1e-6)


def test_bf16_backward_dots_are_bf16_and_close_to_f32() -> None:
    qkv, allowed, keep, g, _ = _inputs(True, True)
    xb = qkv.astype(jnp.bfloat16)

    def loss(x):
        return jnp.sum(attention(x, allowed, keep=keep, keep_prob=0.8, dtype=jnp.bfloat16)
                       .astype(jnp.float32) * g)

    dots = jaxpr_dots(jax.grad(loss), xb)
    assert len(dots) == 6  # 2 forward + 4 backward
    for e in dots:
        assert [v.aval.dtype for v in e.invars] == [jnp.bfloat16, jnp.bfloat16], e
        assert e.params["preferred_element_type"] == jnp.float32
    dq = jax.grad(loss)(xb)
    assert dq.dtype == jnp.bfloat16
    ref = jax.grad(lambda x: jnp.sum(reference_attention(x, allowed, keep, 0.8) * g))(
        xb.astype(jnp.float32))
    rel = float(jnp.linalg.norm(dq.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
    assert rel < 0.02, rel


def test_rejects_an_unfused_tensor() -> None:
    with pytest.raises(ValueError, match="qkv must be"):
        attention(jnp.zeros((B, S, H, D)), jnp.ones((B, 1, 1, S), bool))


def test_attention_rows_are_those_rows_of_full_attention() -> None:
    qkv, valid, allowed, keep, _, _ = attention_inputs((2, 16, 4, 8), 5, 0.9, False, True)
    full = reference_attention(qkv, allowed, keep, 0.9)
    for n in (1, 3, 16):
        got = attention_rows(qkv, allowed, n, keep=keep[:, :, :n], keep_prob=0.9)
        assert got.shape == (2, n, 4, 8)
        np.testing.assert_allclose(np.asarray(got), np.asarray(full[:, :n]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="queries=0"):
        attention_rows(qkv, allowed, 0)
