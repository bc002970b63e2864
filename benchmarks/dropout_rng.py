"""How much do dropout masks cost, and would a cheaper PRNG help? (exploratory)

    python -m benchmarks.dropout_rng [--model bert-6-cpu --batch 8 --seq 128 --steps 10]

Same process, interleaved: the step with dropout 0.1 (threefry, the default),
dropout 0 (no masks at all: the most any RNG change could save), and dropout 0.1
with ``jax_default_prng_impl=rbg`` (XLA RngBitGenerator; here it changes *all* the
step's randomness, i.e. an upper bound for an rbg-for-dropout-only change).
"""

from __future__ import annotations

import argparse
import sys

import jax

from benchmarks.common import interleaved, machine
from benchmarks.train_step import build_ours


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="bert-6-cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtype", default="f32")
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args(argv)
    info = machine()
    fns = {"dropout0.1_threefry": build_ours(a.model, a.batch, a.seq, a.dtype, 0.1)["step"],
           "dropout0": build_ours(a.model, a.batch, a.seq, a.dtype, 0.0)["step"]}
    jax.config.update("jax_default_prng_impl", "rbg")
    fns["dropout0.1_rbg"] = build_ours(a.model, a.batch, a.seq, a.dtype, 0.1)["step"]
    interleaved(fns, 2)
    med = interleaved(fns, a.steps)
    base = med["dropout0.1_threefry"]
    print(f"CPU: {info['cpu']} ({info['cores']} cores), jax {info['jax']}; {a.model} batch "
          f"{a.batch} seq {a.seq} {a.dtype}, {a.steps} interleaved steps (median)")
    for k, v in med.items():
        print(f"  {k:22s} {v * 1e3:8.1f} ms/step  ({base / v:.3f}x vs threefry dropout)")


if __name__ == "__main__":
    main(sys.argv[1:])
