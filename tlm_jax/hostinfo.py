"""What machine a figure came from: the CPU model and the flags that pick its matmul kernels.

Machines differ (an AVX2-only EPYC emulates bf16 matmuls that an avx512_bf16 or AMX CPU runs in
hardware), so every benchmark and experiment report states both next to its numbers.
"""

from __future__ import annotations

import platform

# The CPU features that decide which matmul kernels XLA and torch can use: without
# avx512_bf16 (or amx_bf16) a bf16 matmul is emulated and slower than f32.
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; else :func:`platform.processor`)."""
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """Which of :data:`MATMUL_FLAGS` this CPU reports (Linux ``/proc/cpuinfo``)."""
    have = set((_cpuinfo_field("flags") or "").split())
    return [flag for flag in MATMUL_FLAGS if flag in have]
