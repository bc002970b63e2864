"""Training: mesh/pmap/accumulation equivalence, loss falls, checkpoints and resume."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import REPO, cli_env

from tlm_jax.config import load_config
from tlm_jax.train.loop import pretrain, run_steps
from tlm_jax.train.metrics import read_metrics
from tlm_jax.train.run import build_run

# Dropout off so every parallel layout draws identical randomness (masks are per example).
TINY = ["model.hidden=32", "model.layers=2", "model.heads=4", "model.intermediate=64",
        "model.max_len=32", "data.max_len=32", "model.dropout=0.0", "model.attention_dropout=0.0",
        "data.synthetic_docs=400", "data.vocab_size=1000", "train.batch_size=16",
        "optim.warmup_steps=2", "optim.lr=3e-3", "train.steps=6"]
RTOL = 2e-4  # f32, different reduction orders across layouts, over 6 steps


def _losses(overrides, devices=None, pmap=False, steps=6):
    cfg = load_config(None, [*TINY, *overrides])
    run = build_run(cfg, log=lambda _: None, devices=devices)
    return np.array([m["loss"] for m in run_steps(run, steps, pmap=pmap)])


@pytest.fixture(scope="module")
def reference():
    """The 1-device trajectory every layout must reproduce."""
    return _losses(["mesh.data=1"], devices=jax.devices()[:1])


@pytest.mark.parametrize("mesh", [
    ["mesh.data=8"],
    ["mesh.data=4", "mesh.tensor=2"],
    ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"],
    ["mesh.data=1", "mesh.fsdp=8"],
])
def test_meshes_match_one_device(reference, mesh) -> None:
    assert len(jax.devices()) == 8
    losses = _losses(mesh)
    np.testing.assert_allclose(losses, reference, rtol=RTOL)
    assert losses[-1] < losses[0]


def test_pmap_matches_jit(reference) -> None:
    losses = _losses(["train.parallel=pmap"], pmap=True)
    np.testing.assert_allclose(losses, reference, rtol=RTOL)


def test_grad_accumulation_matches_full_batch(reference) -> None:
    losses = _losses(["mesh.data=1", "optim.grad_accum=2"], devices=jax.devices()[:1])
    np.testing.assert_allclose(losses, reference, rtol=RTOL)


def test_batch_not_dividing_mesh_is_refused() -> None:
    from tlm_jax.errors import TLMError

    with pytest.raises(TLMError, match="not divisible by data\\*fsdp=8"):
        build_run(load_config(None, [*TINY, "train.batch_size=12"]), log=lambda _: None)
    with pytest.raises(TLMError, match="heads 4 is not divisible by tensor=8"):
        build_run(load_config(None, [*TINY, "mesh.data=1", "mesh.tensor=8"]), log=lambda _: None)


def _tlm(args, workdir, devices=1, **kw):
    cmd = [sys.executable, "-m", "tlm_jax.cli", "pretrain", "--workdir", str(workdir), *args]
    return subprocess.Popen(cmd, env=cli_env(devices), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_kill_and_resume_matches_uninterrupted_run(tmp_path) -> None:
    args = [*TINY, "train.steps=24", "train.log_every=1", "train.eval_every=0",
            "train.checkpoint_every=8", "train.progress=false", "train.tensorboard=false",
            "model.dropout=0.1", "model.attention_dropout=0.1"]
    ref = _tlm(args, tmp_path / "ref")
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out
    # Interrupted run: SIGKILL as soon as a checkpoint beyond step 8 is complete.
    work = tmp_path / "killed"
    p = _tlm(args, work)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        steps = [d.name for d in (work / "checkpoints").glob("*") if d.name.isdigit()]
        if any(int(s) >= 8 for s in steps):
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    before = read_metrics(work)
    resumed = _tlm(args, work)
    out2, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out2
    assert "resumed from checkpoint at step" in out2
    ref_m = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "ref")}
    got = read_metrics(work)
    assert [m["step"] for m in got] == list(range(1, 25)), "metrics.jsonl must continue without gaps"
    for m in got:
        assert m["loss"] == ref_m[m["step"]], f"step {m['step']}: {m['loss']} != {ref_m[m['step']]}"
    assert len(before) >= 8


def test_corrupt_latest_checkpoint_falls_back(tmp_path, capsys) -> None:
    base = [*TINY, "mesh.data=8", "train.progress=false", "train.tensorboard=false",
            "train.checkpoint_every=2", "train.eval_every=0", "train.log_every=1"]
    pretrain(load_config(None, [*base, "train.steps=4"]), tmp_path)
    ckpts = tmp_path / "checkpoints"
    assert sorted(int(d.name) for d in ckpts.iterdir() if d.name.isdigit()) == [2, 4]
    # Truncate every array file of the newest checkpoint.
    for f in (ckpts / "4" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and f.suffix not in (".json",):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    shutil.rmtree(ckpts / "4" / "meta", ignore_errors=True)
    summary = pretrain(load_config(None, [*base, "train.steps=6"]), tmp_path)
    captured = capsys.readouterr().out
    assert "checkpoint at step 4" in captured and "cannot be restored" in captured
    assert summary["start_step"] == 2
    steps = [m["step"] for m in read_metrics(tmp_path)]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_loss_falls_and_outputs_exist(tmp_path) -> None:
    summary = pretrain(load_config(None, [*TINY, "train.steps=30", "optim.lr=5e-3",
                                          "train.progress=false", "train.eval_every=10"]), tmp_path)
    for name in ("config.json", "tokenizer.json", "metrics.jsonl", "summary.json"):
        assert (tmp_path / name).is_file()
    assert any((tmp_path / "tensorboard").iterdir())
    assert summary["final_val"]["loss"] < summary["first_val"]["loss"] - 0.5
    rec = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])
    assert {"step", "loss", "lr", "tokens_per_sec", "epoch", "mlm_accuracy"} <= set(rec)


def test_cli_error_is_one_line(tmp_path) -> None:
    p = _tlm(["model.hiden=3"], tmp_path)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 2
    assert out.strip().count("\n") == 0 and out.startswith("error: unknown config key")
    assert "Traceback" not in out
    assert Path(tmp_path).exists()


def test_metrics_log_is_cut_back_to_the_resume_step(tmp_path) -> None:
    from tlm_jax.train.metrics import MetricsLogger, read_metrics

    m = MetricsLogger(tmp_path, tensorboard=False)
    m.log(0, {"loss": 1.0}, "val")
    m.log(5, {"loss": 0.5})
    m.log(10, {"loss": 0.4}, "val")
    m.close()
    # Resumed from the step-5 checkpoint: step 5's records stay, later ones go.
    MetricsLogger(tmp_path, resume_step=5, tensorboard=False).close()
    assert [r["step"] for r in read_metrics(tmp_path, None)] == [0, 5]
    # Restarted from scratch (killed before its first checkpoint): step 0 is evaluated
    # again, so nothing of the killed attempt may stay.
    MetricsLogger(tmp_path, resume_step=0, tensorboard=False).close()
    assert read_metrics(tmp_path, None) == []
