"""BERT encoder: shapes, gathered MLM logits, logical axes, purity, bf16 compute."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tlm_jax.config import ModelConfig
from tlm_jax.models import apply_model, build_model, count_params, init_variables
from tlm_jax.models.layers import gelu_erf
from tlm_jax.sharding import unbox

CFG = ModelConfig(vocab_size=97, hidden=32, layers=2, heads=4, intermediate=64, max_len=16,
                  dropout=0.0, attention_dropout=0.0)


def _inputs(batch=3, length=16, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 97, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, 10:] = 0
    ids[0, 10:] = 0
    pos = np.stack([rng.permutation(length)[:4] for _ in range(batch)]).astype(np.int32)
    return {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask),
            "masked_positions": jnp.asarray(pos)}


def test_gathered_logits_equal_dense_logits_at_positions() -> None:
    model = build_model(CFG)
    variables = unbox(init_variables(model, jax.random.PRNGKey(0), 16))
    x = _inputs()
    out, _ = apply_model(model, variables, x, heads=("mlm", "mlm_dense"))
    assert out["mlm_logits"].shape == (3, 4, 97)
    dense = np.asarray(out["mlm_logits_dense"])
    gathered = np.take_along_axis(dense, np.asarray(x["masked_positions"])[..., None], axis=1)
    np.testing.assert_allclose(np.asarray(out["mlm_logits"]), gathered, rtol=1e-5, atol=1e-5)


def test_params_carry_logical_axis_names() -> None:
    model = build_model(CFG)
    boxed = init_variables(model, jax.random.PRNGKey(0), 16)["params"]
    specs = nn.get_partition_spec(boxed)
    assert tuple(specs["embeddings"]["word"]["embedding"]) == ("vocab", "embed")
    qkv = specs["layer_0"]["attention"]["qkv"]["kernel"]
    assert tuple(qkv) == ("embed", None, "heads", "kv")
    assert tuple(specs["layer_0"]["mlp"]["wi"]["kernel"]) == ("embed", "mlp")


def test_padding_does_not_change_unpadded_rows() -> None:
    """Keys masked out by attention_mask must not influence the other positions."""
    model = build_model(CFG)
    variables = unbox(init_variables(model, jax.random.PRNGKey(1), 16))
    x = _inputs()
    h1 = apply_model(model, variables, x, heads=())[0]["hidden"]
    ids2 = np.asarray(x["input_ids"]).copy()
    ids2[0, 12] = 50  # a padded (masked) position of row 0
    h2 = apply_model(model, variables, {**x, "input_ids": jnp.asarray(ids2)}, heads=())[0]["hidden"]
    np.testing.assert_allclose(np.asarray(h1)[0, :10], np.asarray(h2)[0, :10], atol=1e-6)


def test_apply_is_pure_and_dropout_uses_rng() -> None:
    cfg = dataclasses.replace(CFG, dropout=0.3)
    model = build_model(cfg)
    variables = unbox(init_variables(model, jax.random.PRNGKey(0), 16))
    x = _inputs()
    a = apply_model(model, variables, x, {"dropout": jax.random.PRNGKey(5)}, train=True)[0]
    b = apply_model(model, variables, x, {"dropout": jax.random.PRNGKey(5)}, train=True)[0]
    c = apply_model(model, variables, x, {"dropout": jax.random.PRNGKey(6)}, train=True)[0]
    np.testing.assert_array_equal(a["mlm_logits"], b["mlm_logits"])
    assert not np.allclose(a["mlm_logits"], c["mlm_logits"])


def test_bf16_compute_close_to_f32() -> None:
    model32 = build_model(CFG)
    model16 = build_model(dataclasses.replace(CFG, dtype="bfloat16"))
    variables = unbox(init_variables(model32, jax.random.PRNGKey(0), 16))
    x = _inputs()
    a = apply_model(model32, variables, x)[0]["mlm_logits"]
    b = apply_model(model16, variables, x)[0]["mlm_logits"]
    assert b.dtype == jnp.float32  # logits are accumulated in f32
    assert float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(a).max()) + 0.05
    assert count_params(variables["params"]) > 0


def test_pre_ln_encoder_matches_its_definition() -> None:
    """``norm="pre"``: x + Attn(LN(x)), x + MLP(LN(x)), then one final LayerNorm."""
    from tlm_jax.models.layers import MLP, LayerNorm, SelfAttention  # noqa: PLC0415

    # A large init makes the sublayers matter, so pre- and post-LN outputs differ clearly.
    cfg = dataclasses.replace(CFG, norm="pre", layers=1, init_std=0.3)
    model = build_model(cfg)
    variables = unbox(init_variables(model, jax.random.PRNGKey(3), 16))
    x = _inputs()
    hidden = apply_model(model, variables, x, heads=())[0]["hidden"]
    p = variables["params"]
    emb = model.apply(variables, x["input_ids"], jnp.zeros_like(x["input_ids"]), True,
                      method=lambda m, i, t, d: m.embeddings(i, t, d))
    lp = p["layer_0"]
    ln = LayerNorm(cfg.layer_norm_eps)
    attn = SelfAttention(cfg.heads, cfg.hidden // cfg.heads, 0.0)
    mlp = MLP(cfg.intermediate, cfg.activation)
    h = emb + attn.apply({"params": lp["attention"]},
                         ln.apply({"params": lp["attention_norm"]}, emb), x["attention_mask"], True)
    h = h + mlp.apply({"params": lp["mlp"]}, ln.apply({"params": lp["mlp_norm"]}, h))
    want = ln.apply({"params": p["final_norm"]}, h)
    np.testing.assert_allclose(np.asarray(hidden), np.asarray(want), rtol=1e-5, atol=1e-5)
    # Same parameter tree as post-LN plus the final norm; the outputs differ.
    post = unbox(init_variables(build_model(dataclasses.replace(cfg, norm="post")),
                                jax.random.PRNGKey(3), 16))
    assert set(p) - set(post["params"]) == {"final_norm"}
    post_hidden = apply_model(build_model(dataclasses.replace(cfg, norm="post")), post, x,
                              heads=())[0]["hidden"]
    assert np.abs(np.asarray(post_hidden) - np.asarray(hidden)).max() > 0.1


def test_gelu_matches_the_erf_formula_and_its_derivative() -> None:
    x = jnp.linspace(-8.0, 8.0, 2001)

    def ref(v):
        return 0.5 * v * (1.0 + jax.lax.erf(v / jnp.sqrt(2.0)))

    np.testing.assert_allclose(gelu_erf(x), ref(x), atol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda v: gelu_erf(v).sum())(x),
                               jax.grad(lambda v: ref(v).sum())(x), atol=1e-6)
    xb = x.astype(jnp.bfloat16)  # bf16 in, bf16 out and bf16 gradient, computed in f32
    assert gelu_erf(xb).dtype == jnp.bfloat16
    assert jax.grad(lambda v: gelu_erf(v).astype(jnp.float32).sum())(xb).dtype == jnp.bfloat16


def test_encode_at_queries_equals_the_leading_rows_and_the_classifier_uses_it() -> None:
    """encode(queries=n) == encode()[:, :n] (post-LN, pre-LN, conv front-end, one layer)."""
    from tlm_jax.models.classifier import SequenceClassifier

    x = {k: v for k, v in _inputs().items() if k != "masked_positions"}
    conv = dict(conv_blocks=1, conv_channels=4, conv_kernel=[3, 3])
    for extra in ({}, {"norm": "pre"}, conv, {"layers": 1}):
        cfg = dataclasses.replace(CFG, **extra)
        model = build_model(cfg)
        variables = unbox(init_variables(model, jax.random.PRNGKey(2), 16))
        full = model.apply(variables, x, method=model.encode)
        for n in (1, 5):
            part = model.apply(variables, x, method=model.encode, queries=n)
            assert part.shape == (3, n, cfg.hidden)
            np.testing.assert_allclose(np.asarray(part), np.asarray(full[:, :n]), atol=2e-6,
                                       err_msg=str(extra))
    # The [CLS] classifier computes its last layer at [CLS] only, with the same logits.
    clf = SequenceClassifier(CFG, 3, dropout=0.0)
    v = unbox(clf.init(jax.random.PRNGKey(3), x))
    logits = clf.apply(v, x)["class_logits"]
    ref = clf.apply(v, x, method=lambda m, x: m.classifier(m.encoder.encode(x)[:, 0]))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), atol=2e-6)
    # Training too (CFG has no dropout, so the two paths are the same function): gradients.
    def full(m, x):
        return m.classifier(m.encoder.encode(x, deterministic=False)[:, 0])

    def loss(params, whole: bool):
        if whole:
            out = clf.apply({"params": params}, x, method=full)
        else:
            out = clf.apply({"params": params}, x, deterministic=False)["class_logits"]
        return (out.astype(jnp.float32) ** 2).sum()

    g_full = jax.grad(loss)(v["params"], True)
    g_prefix = jax.grad(loss)(v["params"], False)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         atol=2e-6), g_prefix, g_full)
    # Its jaxpr at [CLS]: the MLP's first matmul of the last layer sees 1 row per sequence.
    jaxpr = str(jax.make_jaxpr(lambda v: clf.apply(v, x))(v))
    assert f"f32[3,1,{CFG.intermediate}]" in jaxpr


def test_mlm_last_layer_at_masked_positions_matches_the_whole_layer() -> None:
    """model.mlm_last_layer=masked: same MLM logits and gradients as =all (no dropout)."""
    x = _inputs()
    for extra in ({}, {"norm": "pre"}):
        outs, grads = {}, {}
        for mode in ("masked", "all"):
            cfg = dataclasses.replace(CFG, mlm_last_layer=mode, **extra)
            model = build_model(cfg)
            variables = unbox(init_variables(model, jax.random.PRNGKey(4), 16))

            def loss(params, model=model):
                out = model.apply({"params": params}, x, deterministic=False, heads=("mlm",))
                return (out["mlm_logits"] ** 2).mean(), out

            (_, outs[mode]), grads[mode] = jax.value_and_grad(loss, has_aux=True)(
                variables["params"])
        assert "hidden_masked" in outs["masked"] and "hidden" not in outs["masked"]
        np.testing.assert_allclose(np.asarray(outs["masked"]["mlm_logits"]),
                                   np.asarray(outs["all"]["mlm_logits"]), atol=2e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                             rtol=1e-4, atol=1e-6),
                     grads["masked"], grads["all"])
    # The last layer's MLP runs at the 4 masked positions of each sequence only.
    model = build_model(CFG)
    variables = unbox(init_variables(model, jax.random.PRNGKey(4), 16))
    jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, x, heads=("mlm",)))(variables))
    assert f"f32[3,4,{CFG.intermediate}]" in jaxpr
    # Any other head (or none) still gets every position's hidden state.
    out, _ = apply_model(model, variables, x, heads=("mlm", "mlm_dense"))
    assert out["hidden"].shape == (3, 16, CFG.hidden)
