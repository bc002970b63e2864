"""Two real ``tlm pretrain`` processes (2 CPU devices each) on 127.0.0.1 == one process.

Process 0 and 1 each load only their half of every global batch (Grain
``ShardInfo``); the step runs on the 4-device global mesh with cross-process
CPU collectives (gloo). Metrics are written by process 0 only; checkpoints are
written cooperatively by Orbax, and this (single) process resumes from them on
its 8-device mesh (Orbax reshards) with the losses of an uninterrupted run.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import jax
import numpy as np
from conftest import REPO, cli_env

from tlm_jax.config import load_config
from tlm_jax.train.loop import pretrain, run_steps
from tlm_jax.train.metrics import read_metrics
from tlm_jax.train.run import build_run

TINY = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.intermediate=64",
        "model.max_len=32", "data.max_len=32", "model.dropout=0.0", "model.attention_dropout=0.0",
        "data.synthetic_docs=300", "data.vocab_size=600", "train.batch_size=8",
        "optim.warmup_steps=2", "optim.schedule=constant", "optim.lr=3e-3"]
RUN = ["train.log_every=1", "train.eval_every=0", "train.checkpoint_every=2",
       "train.progress=false", "train.tensorboard=false", "data.val_fraction=0.0"]
RTOL = 1e-5  # same f32 program on 4 devices; only the cross-process all-reduce differs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(workdir, steps: int) -> list[str]:
    port = _free_port()
    env = cli_env(2)
    env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"  # the default in jax 0.10; explicit
    procs = []
    for i in range(2):
        cmd = [sys.executable, "-m", "tlm_jax.cli", "pretrain", "--workdir", str(workdir),
               *TINY, *RUN, f"train.steps={steps}",
               f"distributed.coordinator_address=127.0.0.1:{port}",
               "distributed.num_processes=2", f"distributed.process_id={i}"]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
    return outs


def test_two_processes_match_one(tmp_path) -> None:
    # Reference: one process, 4 devices, the same global batch of 8 (also fills the token cache).
    cfg = load_config(None, [*TINY, *RUN, "train.steps=6"])
    ref = np.array([m["loss"] for m in run_steps(build_run(cfg, log=lambda _: None,
                                                           devices=jax.devices()[:4]), 6)])
    work = tmp_path / "mp"
    outs = _two_processes(work, 4)
    assert "model:" in outs[0] and "model:" not in outs[1], "only process 0 logs"
    got = read_metrics(work)
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    np.testing.assert_allclose([m["loss"] for m in got], ref[:4], rtol=RTOL)
    ckpts = sorted(int(d.name) for d in (work / "checkpoints").iterdir() if d.name.isdigit())
    assert ckpts == [2, 4]
    # Restore the cooperative checkpoint at step 4 here (1 process, 8 devices) and go on to 6.
    logs: list[str] = []
    summary = pretrain(load_config(None, [*TINY, *RUN, "train.steps=6"]), work, log=logs.append)
    assert "resumed from checkpoint at step 4" in logs
    got = read_metrics(work)
    assert [m["step"] for m in got] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([m["loss"] for m in got], ref, rtol=RTOL)
    print(f"two processes (steps 1-4) + resumed (5-6): {[m['loss'] for m in got]}\n"
          f"one process: {ref.tolist()}")
    assert summary["start_step"] == 4
    assert json.loads((work / "summary.json").read_text())["start_step"] == 4
