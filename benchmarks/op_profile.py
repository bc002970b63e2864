"""Where a train step's time goes, per XLA operation (CPU or GPU).

    python -m benchmarks.op_profile --model bert-6-cpu --batch 32 --seq 128 --dtype bf16 \
        [--steps 3] [--top 30] [--set optim.grad_accum=4] [--vocab 30522] [--out DIR]

Traces a few steps of the real jitted step with the JAX profiler (XLA:CPU's per-thunk
TraceMe events turned on through ``XLA_FLAGS``), then prints the time per operation kind
(``ynn_fusion`` = YNNPACK matmuls and reductions, ``*_fusion`` = XLA loop fusions, ...) and
the most expensive single operations with the model code they came from (HLO op_name), and
the time per model part (attention core, MLP, LayerNorm, dropout, head, ...; forward and
backward apart).
Durations are per step; thunks can run concurrently on the CPU's threads, so the sum can
exceed the step's wall time. On a GPU the times are the kernels' own (CUPTI activity on the
device's streams, from the profiler's XSpace), matched to the HLO operation by kernel name;
their per-step sum is printed beside the wall time (the difference is launch gaps and host
work).
``--out DIR`` keeps the raw per-event table (``events.json.gz``; on a CPU, ms per step of each
op with its shape and model op) and the compiled HLO text for offline study. This is how the
bias-gradient reduce-window, the QKV slice transposes and the argmax over the vocabulary
were found (tlm_jax/models/attention.py, layers.Dense, objectives.base.cross_entropy_terms).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

_FLAG = "--xla_cpu_enable_xprof_traceme=true"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):  # must precede JAX's backend start
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()

import jax  # noqa: E402
from jax.profiler import ProfileData  # noqa: E402

from benchmarks.common import machine  # noqa: E402
from benchmarks.train_step import build_ours  # noqa: E402

_RUNTIME = {"ThunkExecutor::Execute", "ThunkExecutor::Execute (wait for completion)",
            "SlinkyThreadPool::Await"}


def op_times(trace_dir: str, steps: int) -> dict[str, float]:
    """Milliseconds per step of each XLA operation in a perfetto trace under ``trace_dir``."""
    path = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True)
    if not path:
        raise FileNotFoundError(f"no perfetto trace under {trace_dir}")
    with gzip.open(path[0]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    total: collections.Counter = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and not name.startswith("$") and name not in _RUNTIME:
            total[name] += e["dur"] / 1e3 / steps
    return dict(total)


def gpu_op_times(trace_dir: str, steps: int, known: set[str]) -> tuple[dict[str, float], list]:
    """Milliseconds per step of each GPU kernel, keyed by its HLO op where known; raw events.

    Reads the XSpace with ``jax.profiler.ProfileData``; only the device planes' stream lines
    count (the derived "XLA Ops"/"XLA Modules" lines repeat the same time). Inside a CUDA
    graph every kernel's ``hlo_op`` is the command buffer, so XLA's kernel names
    (``loop_add_fusion_5`` for ``loop_add_fusion.5``) are matched to the HLO instead; library
    kernels (cuBLAS ``nvjet_*``) keep their own names.
    """
    path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not path:
        raise FileNotFoundError(f"no xplane.pb under {trace_dir}")
    total: collections.Counter = collections.Counter()
    raw = []
    for plane in ProfileData.from_file(path[0]).planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            for e in line.events:
                stats = {k: (v if isinstance(v, (int, float, str)) else str(v))
                         for k, v in e.stats}
                raw.append({"line": line.name, "name": e.name, "ns": e.duration_ns,
                            "start_ns": e.start_ns, **stats})
                if line.name.startswith("Stream"):
                    hlo_op = str(stats.get("hlo_op", ""))
                    dotted = re.sub(r"_(\d+)$", r".\1", e.name)
                    op = hlo_op if hlo_op in known else dotted if dotted in known else e.name
                    total[op] += e.duration_ns / 1e6 / steps
    return dict(total), raw


def region(op_name: str, op: str = "") -> str:
    """The model part an HLO op came from, and whether it is forward or backward."""
    if op.startswith("tlm_attention"):  # our Pallas kernels (tlm_jax/models/fused_attention.py)
        return f"attention core {op.rsplit('_', 1)[-1]} (fused kernels)"
    part = ("fwd", "bwd")["transpose(" in op_name]
    for pattern, name in ((r"/attention/(qkv|out)/", "attention projections"),
                          (r"/attention/", "attention core"), (r"Dropout", "dropout"),
                          (r"norm", "layernorm"), (r"/mlp/", "mlp"),
                          (r"mlm|word\.attend|lm_head", "head"), (r"embeddings", "embeddings"),
                          (r"BertModel|GPT", "encoder other")):
        if re.search(pattern, op_name):
            return f"{name} {part}"
    return "loss, optimizer, other" if op_name else "unattributed (library kernels)"


def op_names(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (result shape, model op_name) from compiled HLO text."""
    out = {}
    for line in hlo_text.splitlines():
        m = re.match(r"^\s+%([\w.\-]+) = (\S+) ", line)
        if m:
            on = re.search(r'op_name="([^"]*)"', line)
            out[m.group(1)] = (m.group(2), re.sub(r"layer_\d+", "layer_N", on.group(1))
                               if on else "")
    return out


def kind(op: str) -> str:
    """``ynn_fusion.148`` -> ``ynn_fusion``."""
    return re.sub(r"\.\d+$", "", op)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="bert-6-cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=["f32", "bf16"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--set", action="append", default=[], help="extra config override k=v")
    p.add_argument("--out", default=None, help="keep raw events and HLO text here")
    a = p.parse_args(argv)
    extra = {"vocab": a.vocab} if a.vocab else {}
    ours = build_ours(a.model, a.batch, a.seq, a.dtype, overrides=tuple(a.set), **extra)
    gpu = jax.devices()[0].platform == "gpu"
    step = ours["step"]
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    wall = (time.perf_counter() - t0) / a.steps * 1e3
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=not gpu):
            for _ in range(a.steps):
                step()
        hlo = ours["compiled"].as_text()
        names = op_names(hlo)
        if gpu:
            times, raw = gpu_op_times(d, a.steps, set(names))
        else:
            times = op_times(d, a.steps)
            raw = [{"name": op, "ms": ms, "shape": names.get(op, ("", ""))[0],
                    "op_name": names.get(op, ("", ""))[1]} for op, ms in times.items()]
    if gpu:  # kernels whose op is not in the HLO text (memcpy, cuDNN internals) keep their name
        names.update({op: ("", "") for op in times if op not in names})
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "hlo.txt"), "w") as f:
            f.write(hlo)
        with gzip.open(os.path.join(a.out, "events.json.gz"), "wt") as f:
            json.dump(raw, f)
    kinds: collections.Counter = collections.Counter()
    regions: collections.Counter = collections.Counter()
    for op, ms in times.items():
        if op in names:
            kinds[kind(op)] += ms
            regions[region(names[op][1], op)] += ms
    info = machine()
    where = f"device {jax.devices()[0].device_kind}" if gpu else "ops overlap on the threads"
    print(f"CPU: {info['cpu']} ({info['cores']} cores), jax {info['jax']}; {a.model} batch "
          f"{a.batch} seq {a.seq} {a.dtype}: {wall:.1f} ms/step untraced; per-op sum "
          f"{sum(kinds.values()):.1f} ms/step ({where})")
    print("\nby model part (ms/step):")
    for k, ms in regions.most_common():
        print(f"  {ms:8.2f}  {k}")
    print("\nby kind (ms/step):")
    for k, ms in kinds.most_common(a.top):
        print(f"  {ms:8.2f}  {k}")
    print("\nlargest operations (ms/step, result, model op):")
    top = sorted(((ms, op) for op, ms in times.items() if op in names), reverse=True)
    for ms, op in top[: a.top]:
        shape, opname = names[op]
        print(f"  {ms:7.2f}  {op:30s} {shape[:34]:34s} {opname[-80:]}")
    return dict(kinds)


if __name__ == "__main__":
    main()
