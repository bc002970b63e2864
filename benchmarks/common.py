"""Shared helpers: machine description, interleaved timing, run construction."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import flax
import jax

from tlm_jax.hostinfo import cpu_flags, cpu_model

os.environ.setdefault("TLM_CACHE_DIR", "/tmp/tlmcache_bench")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_flags": " ".join(cpu_flags()),
                            "cores": os.cpu_count(),
                            "python": platform.python_version(), "jax": jax.__version__,
                            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                            "xla_flags": os.environ.get("XLA_FLAGS", "")}
    info["flax"] = flax.__version__
    return info


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, rounds: int = 1) -> dict[str, float]:
    """Median seconds per call of each fn, timed round-robin (one call each, in turn).

    Interleaving makes noise from other processes on the shared cores hit all
    contenders alike, so the ratios are meaningful even when the absolutes are not.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


# Dense bf16 peak (TFLOP/s, no sparsity) by device-kind substring, from the vendors' data
# sheets. Matched in order, so the more specific names come first.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("L4", 121.0), ("A10G", 125.0),
    ("TPU v6", 918.0), ("TPU v5p", 459.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0),
    ("TPU v4", 275.0), ("TPU v3", 123.0),
)


def accelerator() -> dict[str, Any]:
    """Platform and device kind of JAX's first device, with its table bf16 peak if known."""
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", "") or ""
    peak = next((p for name, p in BF16_PEAK_TFLOPS if name.lower() in kind.lower()), None)
    return {"platform": d.platform, "device_kind": kind, "device_count": jax.device_count(),
            "bf16_peak_tflops": peak if d.platform != "cpu" else None}
