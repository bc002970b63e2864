"""SPDF (``model.linear=spdf``): exact masks, zeros kept through AdamW, densifying, FLOPs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import train_random_mlm

from tlm_jax import sharding as shd
from tlm_jax.config import ModelConfig, ObjectiveConfig, load_config
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.models import apply_model, build_model, dummy_inputs, init_variables
from tlm_jax.models.flops import pretrain_flops
from tlm_jax.models.sparse import densify_variables, spdf_mask
from tlm_jax.objectives import build_objectives
from tlm_jax.train.checkpoint import Checkpointer
from tlm_jax.train.state import state_shardings

SPECIAL = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=128)
PROJECTIONS = (("attention", "qkv"), ("attention", "out"), ("mlp", "wi"), ("mlp", "wo"))


def _cfg(**kw) -> ModelConfig:
    base = dict(hidden=32, heads=2, intermediate=64, layers=1, vocab_size=128, max_len=16,
                dropout=0.0, attention_dropout=0.0, linear="spdf", spdf_sparsity=0.75)
    return dataclasses.replace(ModelConfig(), **{**base, **kw})


def _init(cfg: ModelConfig, seed: int = 0) -> dict:
    model = build_model(cfg)
    return jax.device_get(jax.jit(lambda r: shd.unbox(init_variables(model, r, cfg.max_len)))(
        jax.random.PRNGKey(seed)))


def _matrices(kernel: np.ndarray, blk: str, name: str) -> list[np.ndarray]:
    """The separate matrices of a projection kernel (the fused QKV holds q, k and v)."""
    if name == "qkv":
        return [kernel[:, i] for i in range(kernel.shape[1])]
    return [kernel]


@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_masks_have_exact_zero_counts_and_dense_tensors_are_untouched(sparsity: float) -> None:
    cfg = _cfg(spdf_sparsity=sparsity)
    v = _init(cfg)
    dense = _init(dataclasses.replace(cfg, linear="dense"))
    for blk, name in PROJECTIONS:
        mask = np.asarray(v["sparse"]["layer_0"][blk][name]["mask"])
        kernel = np.asarray(v["params"]["layer_0"][blk][name]["kernel"])
        assert mask.dtype == np.bool_ and mask.shape == kernel.shape
        for m in _matrices(mask, blk, name):
            assert (~m).sum() == math.floor(sparsity * m.size)
        assert not kernel[~mask].any()  # W <- W ⊙ M at init
        assert np.count_nonzero(kernel[mask]) == mask.sum()
    # Everything that is not a projection kernel: the dense model's values, bit for bit.
    flat = jax.tree_util.tree_leaves_with_path(v["params"])
    dflat = dict(jax.tree_util.tree_leaves_with_path(dense["params"]))
    for path, leaf in flat:
        if path[-1].key != "kernel" or path[-2].key not in ("qkv", "out", "wi", "wo"):
            np.testing.assert_array_equal(leaf, dflat[path])
    # Odd sizes round down; another seed draws another mask.
    m = np.asarray(spdf_mask(jax.random.PRNGKey(0), (7,), (5,), 1, 0.5))
    assert (~m).sum() == 17
    assert not np.array_equal(m, np.asarray(spdf_mask(jax.random.PRNGKey(1), (7,), (5,), 1, 0.5)))


def test_pruned_weights_stay_zero_through_adamw_and_the_mask_is_static(tmp_path: Path) -> None:
    cfg = _cfg()
    first, trained, restored = train_random_mlm(cfg, SPECIAL, 4,
                                                checkpoint_dir=tmp_path / "ckpt")
    for blk, name in PROJECTIONS:
        mask = first.model_state["sparse"]["layer_0"][blk][name]["mask"]
        k0 = first.params["layer_0"][blk][name]["kernel"]
        k = trained.params["layer_0"][blk][name]["kernel"]
        np.testing.assert_array_equal(trained.model_state["sparse"]["layer_0"][blk][name]["mask"],
                                      mask)
        np.testing.assert_array_equal(restored.model_state["sparse"]["layer_0"][blk][name]["mask"],
                                      mask)
        assert (k[~mask] == 0).all()  # exactly zero after 4 steps with weight decay
        assert (k[mask] != k0[mask]).mean() > 0.99  # ... while the kept weights train
        # AdamW's moments of pruned weights stay 0 too, so nothing can revive them later.
        adam = trained.opt_state[1][0]
        mu = adam.mu["layer_0"][blk][name]["kernel"]
        assert (mu[~mask] == 0).all() and (adam.nu["layer_0"][blk][name]["kernel"][~mask] == 0).all()
    jax.tree.map(np.testing.assert_array_equal, restored.params, trained.params)


def test_densifying_keeps_logits_and_a_dense_step_revives_pruned_weights() -> None:
    cfg = _cfg()
    _, trained, _ = train_random_mlm(cfg, SPECIAL, 2)
    dp, dstate = densify_variables(cfg, trained.params, trained.model_state)
    assert dstate == {}
    dense_cfg = dataclasses.replace(cfg, linear="dense")
    inputs = dummy_inputs(4, 16, 3)
    inputs["input_ids"] = jnp.asarray(np.random.default_rng(1).integers(5, 128, (4, 16)))
    sparse_model, dense_model = build_model(cfg), build_model(dense_cfg)
    sparse_out, _ = jax.jit(lambda v: apply_model(sparse_model, v, inputs))(
        {"params": trained.params, **trained.model_state})
    dense_out, _ = jax.jit(lambda v: apply_model(dense_model, v, inputs))({"params": dp})
    np.testing.assert_array_equal(np.asarray(dense_out["mlm_logits"]),
                                  np.asarray(sparse_out["mlm_logits"]))
    # One dense AdamW step from a fresh optimizer (as fine-tuning starts): every weight trains.
    objective = build_objectives(ObjectiveConfig(), SPECIAL, cfg.max_len)[0][0]
    batch = {"input_ids": inputs["input_ids"], "index": jnp.arange(4, dtype=jnp.int32)}
    mlm_inputs, targets = jax.jit(objective.transform)(batch, jax.random.PRNGKey(0))

    def loss(p: dict) -> jax.Array:
        out, _ = apply_model(dense_model, {"params": p}, mlm_inputs)
        terms = objective.loss(out, targets)
        return terms.loss_sum / jnp.maximum(terms.weight_sum, 1.0)

    tx = optax.adamw(1e-3, weight_decay=0.01)
    updates, _ = tx.update(jax.jit(jax.grad(loss))(dp), tx.init(dp), dp)
    new = optax.apply_updates(dp, updates)
    for blk, name in PROJECTIONS:
        mask = trained.model_state["sparse"]["layer_0"][blk][name]["mask"]
        revived = np.asarray(new["layer_0"][blk][name]["kernel"])[~mask]
        assert (revived != 0).mean() > 0.9


def test_flop_counter_scales_only_the_sparsified_matmuls() -> None:
    b, L, h, f, v, layers = 32, 128, 128, 512, 8192, 2
    dense = dataclasses.replace(ModelConfig(), hidden=h, heads=2, intermediate=f, layers=layers,
                                vocab_size=v)
    fl = pretrain_flops(dense, b, L)
    assert fl["projections_dense"] == 6 * layers * (4 * h * h + 2 * h * f) * b * L
    assert fl["attention"] == 3 * layers * 4 * b * L * L * h
    assert fl["head"] == 6 * (h * h + v * h) * b * math.ceil(0.15 * L)
    assert fl["total"] == fl["total_dense"] and fl["ratio"] == 1.0
    for s in (0.5, 0.75):
        sp = pretrain_flops(dataclasses.replace(dense, linear="spdf", spdf_sparsity=s), b, L)
        assert sp["projections"] == pytest.approx((1 - s) * fl["projections_dense"])
        for key in ("attention", "head", "total_dense", "projections_dense"):
            assert sp[key] == fl[key]
        assert sp["total"] == pytest.approx(fl["total"] - s * fl["projections_dense"])
    # SLTrain keeps dense token matmuls and adds the per-step rebuild of each kernel.
    sl = pretrain_flops(dataclasses.replace(dense, linear="sltrain", sltrain_rank=32), b, L)
    assert sl["projections"] == fl["projections_dense"]
    assert sl["sltrain_rebuild"] == 6 * layers * 32 * (4 * h * h + 2 * h * f)
    gpt = pretrain_flops(dataclasses.replace(dense, arch="gpt"), b, L)
    assert gpt["head"] == 6 * v * h * b * L


GPT_PRE = ["model.arch=gpt", "objective.names=[clm]", "model.hidden=32", "model.layers=1",
           "model.heads=2", "model.intermediate=64", "model.max_len=32", "data.max_len=32",
           "data.synthetic_docs=300", "data.vocab_size=600", "train.batch_size=16",
           "train.steps=4", "train.eval_every=0", "train.checkpoint_every=2",
           "train.progress=false", "train.tensorboard=false", "optim.warmup_steps=1",
           "data.val_fraction=0.0", "model.linear=spdf", "model.spdf_sparsity=0.5",
           "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]


@pytest.mark.slow
def test_gpt_pretrain_generate_and_finetune_end_to_end(tmp_path: Path, capsys) -> None:
    from tlm_jax.cli import main
    from tlm_jax.tasks.finetune import finetune, load_finetune_config
    from tlm_jax.train.loop import pretrain
    from tlm_jax.train.pretrained import load_run
    from tlm_jax.train.run import build_run

    wd = tmp_path / "run"
    cfg = load_config(None, GPT_PRE)
    pretrain(cfg, wd, log=lambda _: None)
    run = build_run(cfg, log=lambda _: None)
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        abstract, shardings = state_shardings(run.model, run.tx, run.mesh, cfg.data.max_len)
        ck = Checkpointer(wd / "checkpoints", every=1, keep=5, async_save=False)
        state = jax.device_get(ck.restore(abstract, shardings)[1])
        ck.close()
    mask = state.model_state["sparse"]["layer_0"]["mlp"]["wi"]["mask"]
    kernel = state.params["layer_0"]["mlp"]["wi"]["kernel"]
    assert (kernel[~mask] == 0).all() and (~mask).mean() == 0.5

    # `tlm generate` reads the run densified: the same next-token logits as the sparse model.
    loaded = load_run(wd)
    assert loaded.cfg.model.linear == "dense"
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 300, (2, 16)), jnp.int32)
    sparse_logits = run.model.apply({"params": state.params, **state.model_state},
                                    {"input_ids": ids}, heads=("lm",))["lm_logits"]
    dense_logits = loaded.model.apply({"params": loaded.params}, {"input_ids": ids},
                                      heads=("lm",))["lm_logits"]
    np.testing.assert_allclose(np.asarray(dense_logits), np.asarray(sparse_logits), atol=1e-6)
    assert main(["generate", "--run", str(wd), "--prompt", "the", "--max-new", "4",
                 "--greedy"]) == 0
    capsys.readouterr()

    # Fine-tuning starts from W ⊙ M in a dense model.
    csv = tmp_path / "d.csv"
    rows = ["text,label"] + [f"word{i % 7} {'good' if i % 2 else 'bad'} {i},{i % 2}"
                             for i in range(32)]
    csv.write_text("\n".join(rows) + "\n")
    ft = load_finetune_config(None, [
        "task.text_columns=[text]", "task.label_column=label", "task.val_fraction=0.25",
        "train.batch_size=8", "train.epochs=1", "optim.lr=1e-3", "train.baseline=false",
        "train.checkpoint=false"], task=f"csv:{csv}")
    res = finetune(ft, wd, tmp_path / "ft", [0], log=lambda _: None)
    assert res["pretrained"]["densified_from"] == "spdf"
    assert res["pretrained"]["model"]["linear"] == "dense"
