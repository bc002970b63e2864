"""Where a train step's time goes: masking, forward, forward + backward, and the whole step.

    python -m benchmarks.step_breakdown --model base --vocab 30522 --batch 256 --seq 128 --dtype bf16

Each stage is its own jitted function on the same state and batches, timed round-robin, so
the differences attribute the step's time (backward = grad - forward; optimizer = step - grad).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax

from benchmarks.common import accelerator, interleaved, machine
from benchmarks.train_step import build_ours, step_arg_parser
from tlm_jax.train.step import _forward_terms, _prepare


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = step_arg_parser(__doc__ or "", steps=10).parse_args(argv)
    info = {**machine(), **accelerator()}
    print(f"# {info}", flush=True)
    ours = build_ours(a.model, a.batch, a.seq, a.dtype, a.dropout, tuple(a.set), a.vocab)
    run, holder, batches = ours["run"], ours["holder"], ours["batches"]
    model, objectives = run.model, run.objectives
    # The step donates its state: the other stages work on their own copy.
    params = jax.tree.map(lambda x: x.copy(), holder["state"].params)
    model_state = jax.tree.map(lambda x: x.copy(), holder["state"].model_state)
    rng = jax.random.PRNGKey(0)
    train = a.dropout > 0

    @jax.jit
    def mask(batch: dict) -> Any:
        return _prepare(objectives, batch, rng, None)

    def fwd_loss(params: Any, batch: dict) -> jax.Array:
        prepared, denoms = _prepare(objectives, batch, rng, None)
        return _forward_terms(model, objectives, params, model_state, prepared, denoms,
                              rng if train else None)[0]

    fwd = jax.jit(fwd_loss)
    grad = jax.jit(jax.grad(fwd_loss))
    b0 = batches[0]
    fns = {"mask": lambda: jax.block_until_ready(mask(b0)),
           "forward": lambda: jax.block_until_ready(fwd(params, b0)),
           "forward+backward": lambda: jax.block_until_ready(grad(params, b0)),
           "step": ours["step"]}
    for f in fns.values():  # compile + warm up
        f()
        f()
    med = interleaved(fns, a.steps)
    res = {"cpu": info["cpu"], "device": f"{info['platform']} {info['device_kind']}",
           "model": a.model, "batch": a.batch, "seq": a.seq, "dtype": a.dtype,
           "dropout": a.dropout, **{f"{k}_ms": v * 1e3 for k, v in med.items()}}
    res["backward_ms"] = res["forward+backward_ms"] - res["forward_ms"]
    res["optimizer_and_rest_ms"] = res["step_ms"] - res["forward+backward_ms"]
    for k in ("mask", "forward", "backward", "optimizer_and_rest", "step"):
        print(f"  {k:>20}: {res[k + '_ms']:8.1f} ms")
    print(json.dumps(res, default=float))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
