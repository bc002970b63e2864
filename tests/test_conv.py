"""Tests for the paper's convolutional BERT-1 front-end (tlm_jax/models/conv.py) and its presets."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlm_jax.config import MODEL_PRESETS, ModelConfig, load_config
from tlm_jax.errors import TLMError
from tlm_jax.models import apply_model, build_model, count_params, init_variables
from tlm_jax.models.conv import ConvFrontEnd, conv_param_count
from tlm_jax.models.summary import count_preset
from tlm_jax.sharding import unbox

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("TLM_DATA_DIR", REPO.parent / "shared" / "data"))
WIKI = DATA_DIR / "wikipedia_en_excerpt"

CONV_PRESETS = sorted(n for n in MODEL_PRESETS if "-conv" in n)
# RBG keys: XLA compiles their random bits ~2x faster than threefry's on CPU (tests only).
KEY = jax.random.key(0, impl="rbg")


def small_cfg(**kw: Any) -> ModelConfig:
    base = dict(vocab_size=50, hidden=16, heads=2, intermediate=32, layers=1, max_len=12,
                conv_blocks=2, conv_channels=4, conv_kernel=[3, 3], dropout=0.0,
                attention_dropout=0.0)
    base.update(kw)
    return dataclasses.replace(ModelConfig(), **base)


def inputs(batch: int = 3, length: int = 12, seed: int = 1) -> dict[str, jax.Array]:
    ids = jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, 50)
    return {"input_ids": ids, "attention_mask": jnp.ones_like(ids)}


# --------------------------------------------------------------------------- presets


def test_conv_presets_registered() -> None:
    expected = {"bert-1-conv2-k3-c32-h8", "bert-1-conv3-k16x3-c64-h12",
                "bert-1-conv2-k3-c32-h8-cpu", "bert-1-conv3-k16x3-c64-h12-cpu"}
    assert expected <= set(CONV_PRESETS)
    for name in CONV_PRESETS:
        p = MODEL_PRESETS[name]
        assert p["layers"] == 1 and p["hidden"] == 64 * p["heads"]
        assert p["intermediate"] == 4 * p["hidden"]
        blocks = int(name.split("-conv")[1][0])
        assert p["conv_blocks"] == blocks
        assert f"-c{p['conv_channels']}-" in name or name.endswith("-cpu")
        kernel = "x".join(map(str, p["conv_kernel"])) if p["conv_kernel"] != [3, 3] else "3"
        assert f"-k{kernel}-" in name
        if not name.endswith("-cpu"):
            assert f"-h{p['heads']}" in name and f"-c{p['conv_channels']}-" in name
    cfg = load_config(None, ["model.preset=bert-1-conv3-k16x3-c64-h12"])
    assert (cfg.model.hidden, cfg.model.heads, cfg.model.conv_blocks) == (768, 12, 3)
    assert cfg.model.conv_kernel == [16, 3] and cfg.model.conv_channels == 64


def test_paper_presets_shapes() -> None:
    assert MODEL_PRESETS["bert-6"] == dict(hidden=768, layers=6, heads=12, intermediate=3072,
                                           max_len=128)
    assert MODEL_PRESETS["bert-1"] == dict(hidden=768, layers=1, heads=12, intermediate=3072,
                                           max_len=128)
    assert MODEL_PRESETS["bert-1-wide"]["hidden"] == 1536
    assert MODEL_PRESETS["bert-1-wide"]["heads"] == 24


@pytest.mark.parametrize("name", ["bert-1-conv2-k3-c32-h8", "bert-1-conv3-k16x3-c64-h12"])
def test_preset_counts_add_front_end(name: str) -> None:
    cfg = dataclasses.replace(ModelConfig(), **MODEL_PRESETS[name])
    plain = dict(MODEL_PRESETS[name], conv_blocks=0)
    base_cfg = dataclasses.replace(ModelConfig(), **plain)
    assert count_preset(name, 1000)["params"] == (
        _count(base_cfg, 1000) + conv_param_count(cfg))


def _count(cfg: ModelConfig, vocab: int) -> int:
    cfg = dataclasses.replace(cfg, vocab_size=vocab)
    model = build_model(cfg)
    shapes = jax.eval_shape(lambda r: unbox(init_variables(model, r, cfg.max_len, ("mlm",))),
                            jax.random.PRNGKey(0))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])))


# --------------------------------------------------------------------------- module


@pytest.mark.parametrize("kernel", [[3, 3], [16, 3]])
def test_front_end_keeps_shape_and_names_axes(kernel: list[int]) -> None:
    cfg = small_cfg(conv_kernel=kernel, conv_blocks=3)
    front = ConvFrontEnd(cfg)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 16))
    variables = jax.jit(front.init, static_argnums=2)(KEY, x, True)
    y = jax.jit(front.apply, static_argnums=2)(unbox(variables), x, True)
    assert y.shape == x.shape
    params = variables["params"]
    assert count_params(params) == conv_param_count(cfg)
    k0 = params["block_0"]["conv"]["kernel"]
    assert isinstance(k0, nn.LogicallyPartitioned)
    assert k0.names == ("conv_h", "conv_w", None, "channels")
    assert k0.value.shape == (*kernel, 1, 4)
    assert params["project"]["kernel"].value.shape == (1, 1, 4, 1)
    assert set(variables["batch_stats"]) == {"block_0", "block_1", "block_2"}


def test_bad_kernel_is_one_line_error() -> None:
    front = ConvFrontEnd(small_cfg(conv_kernel=[3]))
    with pytest.raises(TLMError, match="conv_kernel"):
        front.init(jax.random.PRNGKey(0), jnp.zeros((1, 12, 16)), True)


def test_batchnorm_train_updates_stats_eval_uses_them() -> None:
    cfg = small_cfg()
    model = build_model(cfg)
    variables = jax.jit(lambda r: unbox(init_variables(model, r, 12)))(KEY)
    init_bs = variables["batch_stats"]
    np.testing.assert_array_equal(init_bs["front"]["block_0"]["norm"]["mean"], 0.0)
    batch = inputs()
    heads = ("mlm_dense",)
    train_fn = jax.jit(lambda v, b: apply_model(model, v, b, {"dropout": jax.random.PRNGKey(3)},
                                                train=True, heads=heads))
    eval_fn = jax.jit(lambda v, b: apply_model(model, v, b, train=False, heads=heads))
    # Training: running averages move towards the batch statistics.
    _, new_state = train_fn(variables, batch)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_state["batch_stats"],
                         init_bs)
    assert all(v > 0 for v in jax.tree.leaves(moved))
    # Eval: the batch statistics come back unchanged ...
    out_a, same = eval_fn(variables, batch)
    jax.tree.map(np.testing.assert_array_equal, same["batch_stats"], init_bs)
    # ... and the output depends on them (running averages, not the batch's statistics),
    out_b, _ = eval_fn({**variables, **new_state}, batch)
    assert float(jnp.abs(out_a["mlm_logits_dense"] - out_b["mlm_logits_dense"]).max()) > 1e-4
    # ... so one example's eval output does not depend on the rest of its batch.
    other = {k: v.at[1:].set(inputs(seed=7)[k][1:]) for k, v in batch.items()}
    out_c, _ = eval_fn(variables, other)
    np.testing.assert_allclose(out_c["mlm_logits_dense"][0], out_a["mlm_logits_dense"][0],
                               atol=1e-5)
    assert float(jnp.abs(out_c["mlm_logits_dense"][1] - out_a["mlm_logits_dense"][1]).max()) > 0


# --------------------------------------------------------------------------- training + resume


def _wiki_overrides(steps: int) -> list[str]:
    return ["model.preset=bert-1-conv2-k3-c32-h8-cpu", "model.max_len=64",
            "data.source=wikiextractor", f'data.paths=["{WIKI}/*.gz"]', "data.subset=first",
            "data.num_docs=300", "data.vocab_size=2000", "data.max_len=64", "data.val_fraction=0",
            "train.batch_size=8", f"train.steps={steps}", "train.checkpoint_every=2",
            "train.eval_every=0", "train.eval_batches=1", "train.log_every=1",
            "train.progress=false", "train.tensorboard=false", "train.async_checkpoint=false",
            "optim.warmup_steps=0"]


def _host(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.array(jax.device_get(x)), tree)


@pytest.mark.slow
@pytest.mark.skipif(not WIKI.is_dir(), reason="needs $TLM_DATA_DIR/wikipedia_en_excerpt")
def test_conv_pretrain_updates_and_resumes_batch_stats(tmp_path: Path, monkeypatch: Any) -> None:
    from tlm_jax.train import checkpoint as ckpt_mod  # noqa: PLC0415
    from tlm_jax.train.loop import pretrain  # noqa: PLC0415

    monkeypatch.setenv("TLM_CACHE_DIR", str(tmp_path / "cache"))
    saved: dict[int, Any] = {}
    restored: dict[int, Any] = {}
    orig_save, orig_restore = ckpt_mod.Checkpointer.save, ckpt_mod.Checkpointer.restore

    def save(self: Any, step: int, state: Any, *a: Any, **k: Any) -> bool:
        saved[step] = _host(state.model_state)
        return orig_save(self, step, state, *a, **k)

    def restore(self: Any, *a: Any, **k: Any) -> Any:
        out = orig_restore(self, *a, **k)
        if out is not None:
            restored[out[0]] = _host(out[1].model_state)
        return out

    monkeypatch.setattr(ckpt_mod.Checkpointer, "save", save)
    monkeypatch.setattr(ckpt_mod.Checkpointer, "restore", restore)
    work = tmp_path / "run"
    first = pretrain(load_config(None, _wiki_overrides(2)), work, log=lambda _: None)
    assert first["steps"] == 2 and np.isfinite(first["final_train_loss"])
    bs2 = saved[2]["batch_stats"]["front"]
    for block in ("block_0", "block_1"):
        assert np.abs(bs2[block]["norm"]["mean"]).max() > 0  # init is 0
        assert np.abs(bs2[block]["norm"]["var"] - 1.0).max() > 0  # init is 1
    # Resume: the loop restores exactly the saved statistics, then keeps updating them.
    second = pretrain(load_config(None, _wiki_overrides(4)), work, log=lambda _: None)
    assert second["start_step"] == 2 and second["steps"] == 4
    jax.tree.map(np.testing.assert_array_equal, restored[2], saved[2])
    bs4 = saved[4]["batch_stats"]["front"]
    assert np.abs(bs4["block_0"]["norm"]["mean"] - bs2["block_0"]["norm"]["mean"]).max() > 0
