"""SLTrain (``model.linear=sltrain``): support, init, gradients, buffer, counts, densifying."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import train_random_mlm

from tlm_jax import sharding as shd
from tlm_jax.config import ModelConfig, load_config
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.errors import TLMError
from tlm_jax.models import build_model, dummy_inputs, init_variables
from tlm_jax.models.linear import Dense, matmul
from tlm_jax.models.sparse import (
    SLTrainDense,
    densify_variables,
    projection_param_count,
    sltrain_kernel,
    sltrain_nnz,
    sltrain_param_count,
    sltrain_support,
)
from tlm_jax.train.state import create_state

SPECIAL = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=128)
RANK, ALPHA, DENSITY = 4, 2.0, 0.05


def _cfg(**kw) -> ModelConfig:
    base = dict(hidden=32, heads=2, intermediate=64, layers=2, vocab_size=128, max_len=16,
                dropout=0.0, attention_dropout=0.0, linear="sltrain", sltrain_rank=RANK,
                sltrain_alpha=ALPHA, sltrain_density=DENSITY)
    return dataclasses.replace(ModelConfig(), **{**base, **kw})


def _scatter(values: np.ndarray, index: np.ndarray, n: int, m: int) -> np.ndarray:
    """Dense ``[n, g, m]`` of the sparse part (our kernel layout) from values and index."""
    g = values.shape[0]
    flat = np.zeros((g, n * m), np.float32)
    for i in range(g):
        flat[i, index[i]] = values[i]
    return flat.reshape(g, n, m).transpose(1, 0, 2)


def _initializer(cfg: ModelConfig):
    """A jitted ``seed -> variables`` of ``cfg`` (one compilation for several seeds)."""
    model = build_model(cfg)
    init = jax.jit(lambda r: shd.unbox(init_variables(model, r, cfg.max_len)))
    return lambda seed=0: init(jax.random.PRNGKey(seed))


def _init(cfg: ModelConfig, seed: int = 0) -> dict:
    return _initializer(cfg)(seed)


def test_support_is_sorted_unique_sized_and_seeded() -> None:
    n, m = 32, 96
    nnz = sltrain_nnz(n, m, 0.03)
    assert nnz == int(0.03 * 32 * 96) == 92
    idx = np.asarray(sltrain_support(jax.random.PRNGKey(0), 3, n * m, nnz))
    assert idx.shape == (3, nnz) and idx.dtype == np.int32
    for row in idx:
        assert (np.diff(row) > 0).all()  # sorted and distinct
        assert row.min() >= 0 and row.max() < n * m
    assert not np.array_equal(idx[0], idx[1])  # q, k, v get their own supports
    np.testing.assert_array_equal(idx, sltrain_support(jax.random.PRNGKey(0), 3, n * m, nnz))
    assert not np.array_equal(idx, sltrain_support(jax.random.PRNGKey(1), 3, n * m, nnz))


def test_model_supports_follow_formula_differ_by_layer_and_seed() -> None:
    cfg = _cfg()
    init = _initializer(cfg)
    v = init()
    sp = v["sparse"]
    h, f = cfg.hidden, cfg.intermediate
    sizes = {("attention", "qkv"): (h, h), ("attention", "out"): (h, h),
             ("mlp", "wi"): (h, f), ("mlp", "wo"): (f, h)}
    for (blk, name), (n, m) in sizes.items():
        for layer in ("layer_0", "layer_1"):
            idx = np.asarray(sp[layer][blk][name]["index"])
            assert idx.shape[1] == sltrain_nnz(n, m, DENSITY)
            assert idx.max() < n * m
        a, b = (np.asarray(sp[lay][blk][name]["index"]) for lay in ("layer_0", "layer_1"))
        assert not np.array_equal(a, b)
    # Reproducible from the init seed (train.seed), different for another seed.
    jax.tree.map(np.testing.assert_array_equal, init()["sparse"], sp)
    other = init(1)["sparse"]["layer_0"]["mlp"]["wi"]["index"]
    assert not np.array_equal(np.asarray(other), np.asarray(sp["layer_0"]["mlp"]["wi"]["index"]))


def test_at_init_the_kernel_is_exactly_the_sparse_part() -> None:
    layer = SLTrainDense((3, 2, 8), ("embed", None, "heads", "kv"), groups=3, rank=RANK,
                         alpha=ALPHA, density=0.1)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 16))
    v = shd.unbox(jax.jit(layer.init)(jax.random.PRNGKey(0), x))
    p, idx = v["params"], np.asarray(v["sparse"]["index"])
    assert not np.asarray(p["B"]).any()
    assert np.abs(np.asarray(p["A"])).max() <= 1 / np.sqrt(16)
    assert np.abs(np.asarray(p["values"])).max() <= 1 / np.sqrt(16)
    dense_s = _scatter(np.asarray(p["values"]), idx, 16, 16).reshape(16, 3, 2, 8)
    kernel = sltrain_kernel(p["A"], p["B"], p["values"], idx, ALPHA / RANK)
    np.testing.assert_array_equal(np.asarray(kernel), dense_s)
    np.testing.assert_array_equal(np.asarray(layer.apply(v, x)),
                                  np.asarray(matmul(x, jnp.asarray(dense_s))))


@pytest.mark.parametrize("groups", [1, 3])
def test_gradients_match_the_dense_reference(groups: int) -> None:
    n, mg = 16, 12
    feats = (groups, mg) if groups > 1 else (mg,)
    axes = ("embed", None, "mlp") if groups > 1 else ("embed", "mlp")
    layer = SLTrainDense(feats, axes, groups=groups, rank=RANK, alpha=ALPHA, density=0.2)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, n))
    v = shd.unbox(jax.jit(layer.init)(jax.random.PRNGKey(0), x))
    idx = v["sparse"]["index"]
    keys = jax.random.split(jax.random.PRNGKey(2), 2)
    params = dict(v["params"])
    params["B"] = jax.random.normal(keys[0], params["B"].shape) * 0.3  # a nonzero low-rank part
    target = jax.random.normal(keys[1], (6, *feats))

    def loss_sparse(p: dict) -> jax.Array:
        return jnp.sum(jnp.tanh(layer.apply({"params": p, "sparse": v["sparse"]}, x)) * target)

    # The dense reference: a plain Dense whose kernel is (α/r)·A·B + scatter(v), built in numpy.
    a = np.asarray(params["A"]).reshape(n, groups, RANK)
    b = np.asarray(params["B"]).reshape(groups, RANK, mg)
    k_ref = (ALPHA / RANK) * np.einsum("ngr,grm->ngm", a, b) + _scatter(
        np.asarray(params["values"]), np.asarray(idx), n, mg)
    dense = Dense(feats, axes)
    dparams = {"kernel": jnp.asarray(k_ref.reshape(n, *feats)), "bias": params["bias"]}
    np.testing.assert_allclose(np.asarray(loss_sparse(params)), np.asarray(
        jnp.sum(jnp.tanh(dense.apply({"params": dparams}, x)) * target)), rtol=1e-5)
    g_dense = jax.grad(lambda k: jnp.sum(jnp.tanh(dense.apply(
        {"params": {**dparams, "kernel": k}}, x)) * target))(dparams["kernel"])
    gk = np.asarray(g_dense).reshape(n, groups, mg)
    grads = jax.jit(jax.grad(loss_sparse))(params)
    scale = ALPHA / RANK
    # dA = (α/r)·G·Bᵀ and dB = (α/r)·Aᵀ·G in our [in, out] layout; dv = G gathered at I.
    np.testing.assert_allclose(np.asarray(grads["A"]).reshape(n, groups, RANK),
                               scale * np.einsum("ngm,grm->ngr", gk, b), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grads["B"]).reshape(groups, RANK, mg),
                               scale * np.einsum("ngr,ngm->grm", a, gk), rtol=1e-4, atol=1e-6)
    gflat = gk.transpose(1, 0, 2).reshape(groups, n * mg)
    expect_dv = np.stack([gflat[i, np.asarray(idx)[i]] for i in range(groups)])
    np.testing.assert_allclose(np.asarray(grads["values"]), expect_dv, rtol=1e-5, atol=1e-7)
    # And a finite difference along a random direction (the loss is smooth in A, B, v).
    d = jax.tree.map(lambda t: jax.random.normal(jax.random.PRNGKey(3), t.shape), params)
    d = {k: (d[k] if k in ("A", "B", "values") else jnp.zeros_like(d[k])) for k in d}
    eps = 1e-3
    fd = (loss_sparse(jax.tree.map(lambda p, q: p + eps * q, params, d))
          - loss_sparse(jax.tree.map(lambda p, q: p - eps * q, params, d))) / (2 * eps)
    analytic = sum(float(jnp.vdot(grads[k], d[k])) for k in ("A", "B", "values"))
    np.testing.assert_allclose(float(fd), analytic, rtol=2e-2)


def test_index_is_read_only_in_training_and_the_update_stays_rank_r() -> None:
    cfg = _cfg(layers=1)
    # One device here; the end-to-end test trains on a 2x2x2 mesh.
    first, last, _ = train_random_mlm(cfg, SPECIAL, 3)
    jax.tree.map(np.testing.assert_array_equal, last.model_state["sparse"],
                 first.model_state["sparse"])
    assert last.model_state["sparse"]["layer_0"]["mlp"]["wi"]["index"].dtype == np.int32
    for blk, name in (("attention", "qkv"), ("attention", "out"), ("mlp", "wi"), ("mlp", "wo")):
        p = last.params["layer_0"][blk][name]
        idx = last.model_state["sparse"]["layer_0"][blk][name]["index"]
        assert np.abs(p["B"]).max() > 0  # B left 0: the low-rank part trains
        kernel = np.asarray(sltrain_kernel(p["A"], p["B"], p["values"], idx, ALPHA / RANK))
        g = idx.shape[0]
        n = p["A"].size // (g * RANK)
        low = kernel.reshape(n, g, -1) - _scatter(np.asarray(p["values"]), idx, n,
                                                  kernel.size // (n * g))
        for i in range(g):
            assert np.linalg.matrix_rank(low[:, i], tol=1e-6) <= RANK


def test_parameter_count_matches_formula_and_the_rest_is_unchanged() -> None:
    cfg = _cfg()
    dense_cfg = dataclasses.replace(cfg, linear="dense")
    shapes = jax.eval_shape(lambda: _init(cfg)["params"])
    dshapes = jax.eval_shape(lambda: _init(dense_cfg)["params"])
    h, f = cfg.hidden, cfg.intermediate
    per_layer = (3 * sltrain_param_count(h, h, RANK, DENSITY) + 3 * h  # q, k, v + bias
                 + sltrain_param_count(h, h, RANK, DENSITY) + h
                 + sltrain_param_count(h, f, RANK, DENSITY) + f
                 + sltrain_param_count(f, h, RANK, DENSITY) + h)
    assert projection_param_count(shapes) == cfg.layers * per_layer
    assert projection_param_count(dshapes) == cfg.layers * (4 * h * h + 2 * h * f + 5 * h + f)
    # Embeddings, norms and the MLM head: same tree, same shapes as the dense model.
    for key in ("embeddings", "mlm"):
        assert jax.tree.map(lambda x: x.shape, shapes[key]) == \
            jax.tree.map(lambda x: x.shape, dshapes[key])
    for norm in ("attention_norm", "mlp_norm"):
        assert shapes["layer_0"][norm] == dshapes["layer_0"][norm]
    total = sum(x.size for x in jax.tree.leaves(shapes))
    dtotal = sum(x.size for x in jax.tree.leaves(dshapes))
    assert dtotal - total == projection_param_count(dshapes) - projection_param_count(shapes)


def test_mem_command_compares_with_dense(capsys) -> None:
    from tlm_jax.cli import main
    from tlm_jax.commands.mem import linear_comparison, parse_mesh

    over = ["model.linear=sltrain", "model.hidden=128", "model.layers=2", "data.vocab_size=1000"]
    rep = linear_comparison(load_config(None, over), parse_mesh("data=1,fsdp=1,tensor=1"))
    d = rep["dense"]
    h, f, r, dens = 128, 512, 32, 0.03
    saved = 2 * (4 * h * h + 2 * h * f - 3 * sltrain_param_count(h, h, r, dens)
                 - sltrain_param_count(h, h, r, dens) - sltrain_param_count(h, f, r, dens)
                 - sltrain_param_count(f, h, r, dens))
    assert d["parameters"] - rep["parameters"] == saved
    assert rep["bytes"]["params"]["total"] == 4 * rep["parameters"]
    # AdamW keeps two moments per trained scalar (plus its step counters): the state shrinks
    # with the parameters.
    assert abs(rep["bytes"]["opt_state"]["total"] - 2 * rep["bytes"]["params"]["total"]) < 64
    assert d["bytes"]["opt_state"]["total"] - rep["bytes"]["opt_state"]["total"] == 8 * saved
    assert main(["mem", *over, "--mesh", "data=1,fsdp=1,tensor=1"]) == 0
    out = capsys.readouterr().out
    assert "model.linear=sltrain vs dense" in out and "projections" in out
    assert main(["mem", "model.linear=sltrain", "model.sltrain_rank=128"]) == 2
    assert "sltrain_rank=128 is outside" in capsys.readouterr().err


def test_config_refuses_bad_settings() -> None:
    for bad, msg in (("model.linear=lora", "model.linear='lora' is unknown"),
                     ("model.sltrain_density=0", "sltrain_density=0.0 is outside"),
                     ("model.sltrain_alpha=-1", "sltrain_alpha=-1.0 is not positive")):
        kind = [] if "linear=" in bad else ["model.linear=sltrain"]
        with pytest.raises(TLMError, match=msg):
            load_config(None, [*kind, bad])
    # The settings of the kind not chosen are not checked.
    assert load_config(None, ["model.sltrain_density=0"]).model.linear == "dense"


def test_densified_model_computes_the_same_function() -> None:
    cfg = _cfg(layers=1)
    v = _init(cfg, seed=3)
    p = jax.tree.map(np.asarray, v["params"])
    # Give B a value, as after training (at init the low-rank part is exactly 0).
    for blk, name in (("attention", "qkv"), ("attention", "out"), ("mlp", "wi"), ("mlp", "wo")):
        node = p["layer_0"][blk][name]
        node["B"] = np.random.default_rng(0).normal(0, 0.3, node["B"].shape).astype(np.float32)
    dp, dstate = densify_variables(cfg, p, {"sparse": v["sparse"]})
    assert dstate == {}
    dense_cfg = dataclasses.replace(cfg, linear="dense")
    dshapes = jax.eval_shape(lambda: _init(dense_cfg)["params"])
    assert jax.tree.structure(dshapes) == jax.tree.structure(dp)
    inputs = dummy_inputs(2, 16, 3)
    inputs["input_ids"] = jnp.asarray(np.random.default_rng(1).integers(5, 128, (2, 16)))
    sparse_out = build_model(cfg).apply({"params": p, "sparse": v["sparse"]}, inputs)
    dense_out = build_model(dense_cfg).apply({"params": dp}, inputs)
    np.testing.assert_allclose(np.asarray(dense_out["mlm_logits"]),
                               np.asarray(sparse_out["mlm_logits"]), rtol=1e-5, atol=1e-5)


def _csv(path: Path) -> Path:
    rng = np.random.default_rng(0)
    filler = ["the", "city", "club", "season", "league", "team", "river", "album"]
    rows = ["text,label"]
    for i in range(16):
        for label, word in (("pos", "good"), ("neg", "bad")):
            rows.append(f"{' '.join(rng.choice(filler, 5))} {word} {word} {i},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


PRE = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.intermediate=64",
       "model.max_len=32", "data.max_len=32", "data.synthetic_docs=300", "data.vocab_size=1000",
       "train.batch_size=16", "train.eval_every=0", "train.checkpoint_every=2",
       "train.progress=false", "train.tensorboard=false", "optim.warmup_steps=1",
       "data.val_fraction=0.0", "model.dropout=0.0", "model.attention_dropout=0.0",
       "model.linear=sltrain", "model.sltrain_rank=4"]


@pytest.mark.slow
def test_pretrain_checkpoint_pmap_and_finetune_end_to_end(tmp_path: Path) -> None:
    from tlm_jax.tasks.finetune import finetune, load_finetune_config
    from tlm_jax.train.checkpoint import Checkpointer
    from tlm_jax.train.loop import pretrain, run_steps
    from tlm_jax.train.run import build_run
    from tlm_jax.train.state import state_shardings

    # pmap (integer buffers must survive the replica mean) == a 2x2x2 mesh (sharded A, B).
    losses = {}
    for name, extra, pmap in (
            ("mesh", ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"], False),
            ("pmap", ["train.parallel=pmap"], True)):
        run = build_run(load_config(None, [*PRE, "train.steps=3", *extra]), log=lambda _: None)
        losses[name] = [m["loss"] for m in run_steps(run, 3, pmap=pmap)]
    np.testing.assert_allclose(losses["pmap"], losses["mesh"], rtol=2e-4)
    assert np.isfinite(losses["mesh"]).all()

    # Pretrain 4 steps on the 8-device mesh; the checkpoint holds the support bit for bit.
    wd = tmp_path / "run"
    cfg = load_config(None, [*PRE, "train.steps=4", "mesh.data=2", "mesh.fsdp=2",
                             "mesh.tensor=2"])
    pretrain(cfg, wd, log=lambda _: None)
    run = build_run(cfg, log=lambda _: None)
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        abstract, shardings = state_shardings(run.model, run.tx, run.mesh, cfg.data.max_len)
        fresh, _ = create_state(run.model, run.tx, run.mesh, cfg.train.seed, cfg.data.max_len)
        ck = Checkpointer(wd / "checkpoints", every=1, keep=5, async_save=False)
        step, state, _, _ = ck.restore(abstract, shardings)
        ck.close()
    assert step == 4
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.model_state["sparse"]),
                 jax.device_get(fresh.model_state["sparse"]))

    # Fine-tuning loads it densified: a dense model, the same parameter count as the twin.
    csv = _csv(tmp_path / "d.csv")
    ft = load_finetune_config(None, [
        "task.text_columns=[text]", "task.label_column=label", "task.val_fraction=0.25",
        "train.batch_size=8", "train.epochs=1", "optim.lr=1e-3", "train.baseline=false",
        "train.checkpoint=false"], task=f"csv:{csv}")
    res = finetune(ft, wd, tmp_path / "ft", [0], log=lambda _: None)
    twin = finetune(ft, None, tmp_path / "twin", [0], tokenizer_from=str(wd), log=lambda _: None)
    assert res["pretrained"]["densified_from"] == "sltrain"
    assert res["pretrained"]["model"]["linear"] == "dense"
    assert twin["pretrained"]["model"]["linear"] == "dense"
    assert res["parameters"] == twin["parameters"]
    assert 0.0 <= res["accuracy"]["mean"] <= 1.0
    saved = json.loads((tmp_path / "ft" / "finetune_config.json").read_text())
    assert saved["pretrained"]["densified_from"] == "sltrain"
    with pytest.raises(TLMError, match="fine-tuning is dense"):
        finetune(ft, wd, tmp_path / "bad", [0], overrides=["model.linear=sltrain"],
                 log=lambda _: None)
