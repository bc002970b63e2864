"""Shared helpers: machine description, interleaved timing, run construction."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TLM_CACHE_DIR", "/tmp/tlmcache_bench")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    import jax  # noqa: PLC0415

    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(),
                            "python": platform.python_version(), "jax": jax.__version__,
                            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                            "xla_flags": os.environ.get("XLA_FLAGS", "")}
    try:
        import flax  # noqa: PLC0415
        info["flax"] = flax.__version__
    except ImportError:
        pass
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
