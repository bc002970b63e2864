"""Attention forward + backward alone: our custom-VJP attention vs JAX's and cuDNN's.

    python -m benchmarks.attention [--batch 256 --seq 128 --heads 12 --head-dim 64] \
        [--layers 12] [--reps 20] [--fused-blocks 64,32,4,8 ...] [--interpret]

Times ``value_and_grad`` of ``--layers`` independent attention blocks (one jitted call, as in
a model's step, so per-call dispatch does not hide the kernels) on fused
``qkv [b, s, 3, h, d]`` bf16 tensors with ~5 % padding, round-robin in one process, and
reports the time per block:

* ``ours``, ``ours_dropout``: :func:`tlm_jax.models.attention.attention` (what the model
  runs), the second with a 0.1 dropout keep mask drawn as the model draws it;
* ``jax_xla``: ``jax.nn.dot_product_attention(implementation="xla")`` under JAX's autodiff;
* ``fused``, ``fused_dropout`` (GPU, or any backend with ``--interpret``):
  :func:`tlm_jax.models.fused_attention.fused_attention`, the Pallas kernels
  (``model.attention_impl=fused``);
* ``fused[BQ,BQ_BWD,W,W_BWD]_dropout`` for each ``--fused-blocks``: the same kernels with
  other query blocks and warp counts (the default is ``DEFAULT_BLOCKS`` in that module);
* ``cudnn`` (GPU only): ``jax.nn.dot_product_attention(implementation="cudnn")``, cuDNN's
  fused (flash) kernels with the padding given as key lengths; no dropout.

Prints ms, TFLOP/s (4*b*s^2*h*d forward, x3 forward + backward) and each variant's largest
difference from ``ours`` (``ours_dropout`` for a dropout variant) in output and gradient,
so a faster kernel is also shown to agree.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.common import accelerator, interleaved, machine
from tlm_jax.models.attention import attention
from tlm_jax.models.dropout import keep_mask, keep_probability
from tlm_jax.models.fused_attention import fused_attention


def variants(b: int, s: int, h: int, d: int, gpu: bool, interpret: bool,
             blocks: list[tuple[int, ...]]) -> dict[str, Any]:
    """name -> f(qkv, lengths, key) returning the context ``[b, s, h, d]``."""
    rate = 0.1

    def allowed(lengths: jax.Array) -> jax.Array:
        return (jnp.arange(s)[None, :] < lengths[:, None])[:, None, None, :]

    def ours(rate_: float):
        def f(qkv: jax.Array, lengths: jax.Array, key: jax.Array) -> jax.Array:
            keep = keep_mask(key, (b, h, s, s), rate_) if rate_ else None
            return attention(qkv, allowed(lengths), keep=keep,
                             keep_prob=keep_probability(rate_), dtype=jnp.bfloat16)
        return f

    def jax_nn(impl: str):
        def f(qkv: jax.Array, lengths: jax.Array, key: jax.Array) -> jax.Array:
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            if impl == "cudnn":
                return jax.nn.dot_product_attention(
                    q, k, v, query_seq_lengths=jnp.full_like(lengths, s),
                    key_value_seq_lengths=lengths, implementation="cudnn")
            return jax.nn.dot_product_attention(q, k, v, mask=allowed(lengths),
                                                implementation="xla")
        return f

    def fused(rate_: float, blk: tuple[int, ...] | None = None):
        def f(qkv: jax.Array, lengths: jax.Array, key: jax.Array) -> jax.Array:
            valid = jnp.arange(s)[None, :] < lengths[:, None]
            keep = keep_mask(key, (b, h, s, s), rate_) if rate_ else None
            return fused_attention(qkv, valid, keep=keep, keep_prob=keep_probability(rate_),
                                   interpret=not gpu, blocks=blk)
        return f

    out = {"ours": ours(0.0), "ours_dropout": ours(rate), "jax_xla": jax_nn("xla")}
    if gpu or interpret:
        out["fused"] = fused(0.0)
        out["fused_dropout"] = fused(rate)
        for blk in blocks:
            out[f"fused[{','.join(map(str, blk))}]_dropout"] = fused(rate, blk)
    if gpu:
        out["cudnn"] = jax_nn("cudnn")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=12, help="attention blocks per timed call")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--fused-blocks", action="append", default=[], metavar="BQ,BQ_BWD,W,W_BWD",
                   help="also time the fused kernels (with dropout) with these query blocks "
                        "and warps (forward, backward); repeatable")
    p.add_argument("--interpret", action="store_true",
                   help="also run the fused kernels off a GPU, in Pallas's interpreter (slow)")
    a = p.parse_args(argv)
    b, s, h, d = a.batch, a.seq, a.heads, a.head_dim
    info = {**machine(), **accelerator()}
    gpu = info["platform"] == "gpu"
    kq, kg, kd = jax.random.split(jax.random.PRNGKey(0), 3)
    n = a.layers
    # One array per block (a stacked array's gradient would be assembled by dynamic updates
    # that cost more than the attention on a CPU).
    qkv = tuple(jax.random.normal(k, (b, s, 3, h, d), jnp.float32).astype(jnp.bfloat16)
                for k in jax.random.split(kq, n))
    cot = tuple(jax.random.normal(k, (b, s, h, d), jnp.float32).astype(jnp.bfloat16)
                for k in jax.random.split(kg, n))
    keys = jax.random.split(kd, n)
    # Every sequence is padded a little (as packed MLM batches are not): 90-100 % real.
    lengths = jnp.asarray(s - (jnp.arange(b) % max(1, s // 10)), jnp.int32)

    results: dict[str, Any] = {}
    fns, outs = {}, {}
    blocks = [tuple(int(x) for x in spec.split(",")) for spec in a.fused_blocks]
    for name, f in variants(b, s, h, d, gpu, a.interpret, blocks).items():
        def loss(qkv: tuple, cot: tuple, f=f) -> tuple[jax.Array, jax.Array]:
            ctxs = [f(qkv[i], lengths, keys[i]) for i in range(n)]
            total = sum(jnp.sum(c.astype(jnp.float32) * cot[i].astype(jnp.float32))
                        for i, c in enumerate(ctxs))
            return total, ctxs[0]

        g = jax.jit(jax.value_and_grad(loss, has_aux=True))
        try:
            (_, ctx), grad = g(qkv, cot)
            grad = grad[0]
        except Exception as e:  # noqa: BLE001 - a backend may lack a kernel: report, go on
            print(f"  {name}: unavailable ({type(e).__name__}: {str(e)[:1500]})")
            continue
        outs[name] = (ctx, grad)
        fns[name] = lambda g=g: jax.block_until_ready(g(qkv, cot))
    med = {k: v / n for k, v in interleaved(fns, a.reps).items()}
    flops = 3 * 4.0 * b * s * s * h * d
    # Padded queries attend normally in every variant; compare only real positions.
    real = (jnp.arange(s)[None, :] < lengths[:, None])[:, :, None, None]
    print(f"# {info['cpu']} ({info['cores']} cores), {info['platform']} {info['device_kind']}, "
          f"jax {info['jax']}")
    print(f"attention fwd+bwd per block, qkv bf16 [{b}, {s}, 3, {h}, {d}], {n} blocks per "
          f"call, median of {a.reps}")
    for name, t in med.items():
        row = {"ms": t * 1e3, "tflops": flops / t / 1e12}
        # Dropout variants draw the same masks: compare each with our XLA path's twin.
        ref = outs.get("ours_dropout" if name.endswith("_dropout") else "ours")
        if ref is not None and not name.startswith("ours"):
            row["max_out_diff"] = float(jnp.max(jnp.where(
                real, jnp.abs(outs[name][0].astype(jnp.float32) - ref[0].astype(jnp.float32)),
                0)))
            row["max_grad_diff"] = float(jnp.max(jnp.abs(
                outs[name][1].astype(jnp.float32) - ref[1].astype(jnp.float32))))
        results[name] = row
        extra = "".join(f", {k} {v:.3g}" for k, v in row.items() if k.startswith("max"))
        print(f"  {name:>13}: {row['ms']:8.2f} ms  {row['tflops']:7.1f} TFLOP/s{extra}")
    print(json.dumps({"cpu": info["cpu"], "device": info["device_kind"], **results}))
    return results


if __name__ == "__main__":
    main()
