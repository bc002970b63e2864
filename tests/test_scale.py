"""Scale-out: ``tlm mem`` sizes vs real sharded arrays; decoder mesh equivalence."""

from __future__ import annotations

import jax
import numpy as np

from tlm_jax import sharding as shd
from tlm_jax.cli import main
from tlm_jax.commands.mem import memory_report, parse_mesh
from tlm_jax.config import load_config
from tlm_jax.models import build_model
from tlm_jax.train.optimizer import make_optimizer
from tlm_jax.train.state import create_state


def _real_per_device(tree) -> dict:
    """Bytes each device actually holds (addressable shards)."""
    per: dict = {}
    for leaf in jax.tree.leaves(tree):
        for sh in leaf.addressable_shards:
            per[sh.device] = per.get(sh.device, 0) + sh.data.nbytes
    return per


def test_mem_bert6_fsdp8_matches_real_arrays(capsys) -> None:
    assert len(jax.devices()) == 8
    over = ["model.preset=bert-6", "data.vocab_size=30522"]
    rep = memory_report(load_config(None, over), parse_mesh("data=1,fsdp=8,tensor=1"))
    assert rep["vocab_size"] == 30592  # 30522 padded to a multiple of 128
    b = rep["bytes"]
    cfg = load_config(None, over)
    cfg.model.vocab_size = 30592
    model = build_model(cfg.model)
    tx, _ = make_optimizer(cfg.optim, 10)
    mesh = shd.make_mesh(1, 8, 1)
    with jax.set_mesh(mesh):
        state, _ = create_state(model, tx, mesh, 0, cfg.data.max_len)
    real_params = _real_per_device(state.params)
    real_opt = _real_per_device(state.opt_state)
    real_all = _real_per_device(state)
    assert len(real_all) == 8
    for d in real_all:
        np.testing.assert_allclose(real_params[d], b["params"]["per_device"], rtol=0.02)
        np.testing.assert_allclose(real_opt[d], b["opt_state"]["per_device"], rtol=0.02)
        np.testing.assert_allclose(real_all[d], b["total"]["per_device"], rtol=0.02)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    assert b["params"]["total"] == n_params * 4
    # fsdp=8 puts about an eighth of the state on each device (norms/biases stay replicated).
    assert b["total"]["per_device"] < b["total"]["total"] / 8 * 1.05
    print(f"bert-6 fsdp=8 per device: helper params={b['params']['per_device']:.0f} "
          f"opt={b['opt_state']['per_device']:.0f} total={b['total']['per_device']:.0f}; "
          f"real params={max(real_params.values())} opt={max(real_opt.values())} "
          f"total={max(real_all.values())}")
    del state


def test_mem_cli_prints_and_refuses(capsys) -> None:
    assert main(["mem", "model.preset=bert-6", "data.vocab_size=30522",
                 "--mesh", "data=1,fsdp=8,tensor=1"]) == 0
    out = capsys.readouterr().out
    assert "vocab 30592" in out and "adamw mu+nu" in out and "fsdp=8" in out
    # heads 12 do not split over tensor=8; hidden 768 does not split over fsdp=7.
    assert main(["mem", "model.preset=bert-6", "--mesh", "data=1,fsdp=1,tensor=8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "heads 12 is not divisible by tensor=8" in err
    assert main(["mem", "model.preset=bert-6", "train.batch_size=56",
                 "--mesh", "data=1,fsdp=7,tensor=1"]) == 2
    assert "hidden 768 is not divisible by fsdp=7" in capsys.readouterr().err
    # A 64-device mesh is sized without 64 devices.
    assert main(["mem", "model.preset=bert-6", "train.batch_size=64", "--json",
                 "--mesh", "data=8,fsdp=8,tensor=1"]) == 0


# The GPT decoder (model.arch=gpt, objective clm) on a mesh using all three axes must
# reproduce its 1-device trajectory, as tests/test_train.py checks for the encoder.
GPT = ["model.arch=gpt", "objective.names=[clm]", "model.hidden=32", "model.layers=1",
       "model.heads=4", "model.intermediate=64", "model.max_len=32", "data.max_len=32",
       "model.dropout=0.0", "model.attention_dropout=0.0", "data.synthetic_docs=300",
       "data.vocab_size=600", "train.batch_size=8", "optim.warmup_steps=1", "optim.lr=3e-3",
       "data.val_fraction=0.0"]


def _gpt_losses(overrides, devices=None, steps=3):
    from tlm_jax.train.loop import run_steps  # noqa: PLC0415
    from tlm_jax.train.run import build_run  # noqa: PLC0415

    run = build_run(load_config(None, [*GPT, *overrides]), log=lambda _: None, devices=devices)
    return np.array([m["loss"] for m in run_steps(run, steps)])


def test_gpt_decoder_mesh_matches_one_device() -> None:
    ref = _gpt_losses(["mesh.data=1"], devices=jax.devices()[:1])
    got = _gpt_losses(["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    np.testing.assert_allclose(got, ref, rtol=2e-4)  # f32; reduction order differs per layout
    assert got[-1] < got[0]


def test_per_shard_runs_fn_on_each_devices_shard() -> None:
    import flax.linen as nn
    import jax.numpy as jnp

    mesh = shd.make_mesh(data=2, fsdp=2, tensor=2)
    seen: list[tuple[int, ...]] = []

    def fn(x):
        seen.append(x.shape)  # traced once, with the shard's shape
        return x * 2

    axes = ("batch", "heads", "kv")
    x = jnp.arange(8 * 4 * 6, dtype=jnp.float32).reshape(8, 4, 6)
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        y = jax.jit(shd.per_shard(fn, [axes], axes))(x)
        assert seen == [(2, 2, 6)]  # batch over data x fsdp = 4, heads over tensor = 2
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x) * 2)
        seen.clear()
        jax.jit(shd.per_shard(fn, [axes], axes))(x[:3])  # 3 examples do not split 4 ways
        assert seen == [(3, 4, 6)]
    seen.clear()
    shd.per_shard(fn, [axes], axes)(x)  # no mesh: fn itself
    assert seen == [(8, 4, 6)]
