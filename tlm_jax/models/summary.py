"""Parameter counts of model presets (``tlm params``), computed from real init shapes."""

from __future__ import annotations

import dataclasses
import json
import math

import jax

from tlm_jax.config import MODEL_PRESETS, ModelConfig, unknown_preset
from tlm_jax.models import build_model, init_variables
from tlm_jax.sharding import unbox


def count_preset(name: str, vocab_size: int = 30522) -> dict[str, int | str]:
    """Parameter count of preset ``name`` (without building arrays: ``jax.eval_shape``).

    Raises:
        TLMError: ``name`` is not a preset (the error names the closest ones).
    """
    if name not in MODEL_PRESETS:
        raise unknown_preset(name)
    cfg = dataclasses.replace(ModelConfig(), preset=name, vocab_size=vocab_size,
                              **MODEL_PRESETS[name])
    model = build_model(cfg)
    shapes = jax.eval_shape(lambda r: unbox(init_variables(model, r, cfg.max_len, heads=("mlm",))),
                            jax.random.PRNGKey(0))
    params = shapes["params"]
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    emb = sum(math.prod(x.shape) for x in jax.tree.leaves(params["embeddings"]))
    return {"preset": name, "layers": cfg.layers, "hidden": cfg.hidden, "heads": cfg.heads,
            "intermediate": cfg.intermediate, "conv_blocks": cfg.conv_blocks,
            "params": int(total), "non_embedding_params": int(total - emb)}


def parameter_table(presets: list[str] | None = None, vocab_size: int = 30522,
                    as_json: bool = False) -> str:
    """A markdown (or JSON) table of parameter counts for ``presets`` (default: all)."""
    rows = [count_preset(p, vocab_size) for p in (presets or sorted(MODEL_PRESETS))]
    if as_json:
        return json.dumps(rows, indent=2)
    head = "| preset | layers | hidden | heads | FF | conv blocks | params | non-embedding |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['layers']} | {r['hidden']} | {r['heads']} | "
                     f"{r['intermediate']} | {r['conv_blocks']} | {r['params']:,} | "
                     f"{r['non_embedding_params']:,} |")
    lines.append(f"(vocabulary {vocab_size})")
    return "\n".join(lines)
