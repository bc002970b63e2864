"""``tlm export-hf``: a run's newest checkpoint becomes an HF ``BertForMaskedLM`` directory."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
from safetensors.numpy import save_file

from tlm_jax import sharding as shd
from tlm_jax.config import Config, read_config
from tlm_jax.data.tokenizer import load_tokenizer, special_tokens
from tlm_jax.errors import TLMError
from tlm_jax.hf.mapping import check_exportable, model_config_to_hf, params_to_hf_state
from tlm_jax.hf.tokenizer import export_tokenizer, vocab_list
from tlm_jax.train.pretrained import load_pretrained_variables


def load_run_weights(run: str | Path, *, log: Callable[[str], None] = print
                     ) -> tuple[Config, Any, dict[str, Any], dict[str, Any], int]:
    """``(config, tokenizer, params, model_state, step)`` of a run's newest restorable checkpoint."""
    run = Path(run).expanduser().resolve()
    if not (run / "config.json").is_file():
        raise TLMError(f"{run} is not a tlm_jax run directory (no config.json)",
                       "pass the --workdir of `tlm pretrain` or `tlm import-hf`")
    cfg = read_config(run / "config.json")
    if not (run / "tokenizer.json").is_file():
        raise TLMError(f"{run} has no tokenizer.json", "pass a complete run directory")
    tok = load_tokenizer(run / "tokenizer.json")
    mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        params, model_state, step = load_pretrained_variables(run, mesh, log=log)
    return cfg, tok, params, model_state, step


def export_hf(run: str | Path, out: str | Path, *, force: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write run ``run`` as an HF ``BertForMaskedLM`` directory ``out`` (see :mod:`tlm_jax.hf`)."""
    run, out = Path(run).expanduser().resolve(), Path(out).expanduser().resolve()
    if (run / "config.json").is_file():
        check_exportable(read_config(run / "config.json").model)  # before loading anything
    if out.exists() and any(out.iterdir()) and not force:
        raise TLMError(f"{out} exists and is not empty", "pass --force or choose a new --out")
    cfg, tok, params, _, step = load_run_weights(run, log=log)
    sp = special_tokens(tok)
    n_vocab = len(vocab_list(tok))
    if n_vocab > cfg.model.vocab_size:
        raise TLMError(f"the run's tokenizer has {n_vocab} tokens but the model only "
                       f"{cfg.model.vocab_size}", "the run directory is inconsistent")
    sd = params_to_hf_state(params, cfg.model, n_vocab)
    out.mkdir(parents=True, exist_ok=True)
    hf_cfg = model_config_to_hf(cfg.model, n_vocab, sp.pad)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True) + "\n")
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    export_tokenizer(tok, out, cfg.model.max_len)
    dropped = sorted(k for k in params if k not in {"embeddings", "mlm"}
                     and not k.startswith("layer_"))
    summary = {"run": str(run), "out": str(out), "step": step, "vocab_size": n_vocab,
               "tensors": len(sd), "dropped": dropped}
    log(f"exported {run} (step {step}) as BertForMaskedLM to {out}: config.json "
        "model.safetensors vocab.txt tokenizer.json tokenizer_config.json "
        "special_tokens_map.json")
    if dropped:
        log(f"not exported (no HF BertForMaskedLM counterpart): {', '.join(dropped)}")
    return summary
