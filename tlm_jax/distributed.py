"""Multi-process start-up through JAX's own runtime (``jax.distributed``)."""

from __future__ import annotations

import os

import jax

from tlm_jax.config import DistributedConfig
from tlm_jax.errors import TLMError

_INITIALIZED = False


def maybe_initialize(cfg: DistributedConfig) -> None:
    """Call ``jax.distributed.initialize`` once when enabled (config or ``TLM_COORDINATOR``).

    With no coordinator given, JAX auto-detects the cluster (Cloud TPU VMs, SLURM).
    """
    global _INITIALIZED
    address = cfg.coordinator_address or os.environ.get("TLM_COORDINATOR", "")
    if _INITIALIZED or not (cfg.enabled or address):
        return
    kwargs = {}
    if address:
        if cfg.num_processes <= 0 or cfg.process_id < 0:
            raise TLMError("a coordinator address needs distributed.num_processes and "
                           "distributed.process_id", "set both (process ids count from 0)")
        kwargs = dict(coordinator_address=address, num_processes=cfg.num_processes,
                      process_id=cfg.process_id)
        if cfg.local_device_ids:
            kwargs["local_device_ids"] = list(cfg.local_device_ids)
    try:
        jax.distributed.initialize(**kwargs)
    except Exception as e:  # the runtime raises RuntimeError/ValueError variants
        raise TLMError(f"jax.distributed.initialize failed: {str(e).splitlines()[0]}",
                       "check the coordinator address, process count and id") from e
    _INITIALIZED = True


def is_main_process() -> bool:
    """True on process 0 (the one that logs)."""
    return jax.process_index() == 0
