"""What a report says about its compute: the machine, and each pretraining run's budget.

Every report states where its numbers came from (CPU model and matmul flags, XLA
flags, cores, load) and, per pretraining run, the budget (steps, tokens trained on,
wall time) and the final validation loss next to the unigram baseline of the run's
own corpus -- the plateau guard's yardstick (:mod:`tlm_jax.eval.plateau`).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import jax

from tlm_jax.config import read_config
from tlm_jax.data.tokenizer import load_tokenizer
from tlm_jax.eval import plateau as PL
from tlm_jax.hostinfo import cpu_flags, cpu_model


def environment() -> dict[str, Any]:
    """Facts about the machine the numbers came from (CPU model and matmul flags included)."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"platform": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
            "cpu": cpu_model(), "cpu_flags": " ".join(cpu_flags()),
            "cpu_count": os.cpu_count(), "loadavg": load,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def pretrain_summary(workdir: Path) -> dict[str, Any]:
    """Budget and final validation loss of a pretraining run, with its corpus's unigram loss.

    Steps, wall seconds, parameters, final validation losses, corpus size, the tokens
    the run trained on (steps x batch x sequence length, from ``config.json``) and
    ``unigram``: the loss of a token-frequency model on the run's own token cache
    (:func:`tlm_jax.eval.plateau.cache_unigram`), the plateau guard's baseline.
    """
    workdir = Path(workdir)
    p = workdir / "summary.json"
    s = json.loads(p.read_text()) if p.is_file() else {}
    data = s.get("data") or {}
    out = {"run": str(workdir), "steps": s.get("steps"), "seconds": s.get("seconds"),
           "parameters": s.get("parameters"), "final_val": s.get("final_val"),
           "train_docs": data.get("train_docs"), "train_tokens": data.get("train_tokens")}
    if (workdir / "config.json").is_file() and s.get("steps") is not None:
        cfg = read_config(workdir / "config.json")
        out.update(batch_size=cfg.train.batch_size, seq_len=cfg.data.max_len,
                   tokens_seen=int(s["steps"]) * cfg.train.batch_size * cfg.data.max_len)
    out["unigram"] = run_unigram(workdir, data.get("cache_dir"))
    return out


def run_unigram(workdir: Path, cache_dir: str | None) -> dict[str, Any] | None:
    """The unigram baseline of a run's token cache (``None`` when the cache is gone)."""
    tok = Path(workdir) / "tokenizer.json"
    if not cache_dir or not (Path(cache_dir) / "meta.json").is_file() or not tok.is_file():
        return None
    t = load_tokenizer(tok)
    special = [i for i, a in t.get_added_tokens_decoder().items() if a.special]
    return {**PL.cache_unigram(cache_dir, special, t.get_vocab_size()),
            "source": f"token cache {cache_dir}"}
