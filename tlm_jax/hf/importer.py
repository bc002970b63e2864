"""``tlm import-hf``: an HF BERT checkpoint directory becomes a run directory (see :mod:`tlm_jax.hf`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from tlm_jax.config import (
    MERGE_ERRORS,
    MODEL_PRESETS,
    Config,
    ModelConfig,
    check_sections,
    load_config,
    merge_error,
    parse_overrides,
    save_config,
    to_dict,
    validate,
)
from tlm_jax.data.cache import write_failure
from tlm_jax.data.tokenizer import special_tokens, tokenizer_hash
from tlm_jax.errors import TLMError
from tlm_jax.hf.exporter import staged_dir
from tlm_jax.hf.mapping import SHAPE_KEYS, hf_architecture, hf_state_to_params, hf_to_model_config
from tlm_jax.hf.tokenizer import import_tokenizer
from tlm_jax.hf.weights import read_hf_config, read_hf_weights
from tlm_jax.models import build_model, init_variables
from tlm_jax.sharding import unbox
from tlm_jax.train.checkpoint import Checkpointer
from tlm_jax.train.optimizer import make_optimizer
from tlm_jax.train.state import TrainState


def _build_config(mfields: dict[str, Any], tokenizer_path: Path, lowercase: bool, name: str,
                  overrides: Sequence[str]) -> Config:
    shape = ("hidden", "layers", "heads", "intermediate", "max_len")
    preset = next((n for n, p in sorted(MODEL_PRESETS.items())
                   if all(p.get(k) == mfields[k] for k in shape) and not p.get("conv_blocks")),
                  ModelConfig.preset)  # no preset has this shape: the default, fully overridden
    base = to_dict(load_config(None, [f"model.preset={preset}"]))
    base["name"] = name
    base["model"].update(mfields)
    base["data"].update(tokenizer=str(tokenizer_path), lowercase=lowercase,
                        max_len=min(base["data"]["max_len"], mfields["max_len"]))
    cli = parse_overrides(overrides, "data.max_len=64")
    check_sections(OmegaConf.to_container(cli), Config(), "import-hf overrides", drop_null=False)
    changed = sorted(k for k in (OmegaConf.to_container(cli).get("model") or {}) if k in SHAPE_KEYS)
    if changed:
        raise TLMError(f"model.{changed[0]} is fixed by the imported checkpoint",
                       "drop that override (only dropout-like model keys may change)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), base, cli)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except MERGE_ERRORS as e:
        raise merge_error(e, "import-hf overrides") from e
    try:
        validate(cfg)
    except TLMError as e:  # a value from config.json (hidden_dropout_prob -> model.dropout, ...)
        raise TLMError(f"{e.cause} (from the checkpoint's config.json or an override)", e.fix) from e
    return cfg


def _check_tree(params: dict[str, Any], abstract: dict[str, Any]) -> None:
    got = jax.tree_util.tree_structure(params)
    want = jax.tree_util.tree_structure(abstract)
    if got != want:
        raise TLMError("the imported parameter tree does not match the model's",
                       "report this as a bug in tlm_jax.hf")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(abstract),
                            strict=True):
        if tuple(np.shape(a)) != tuple(b.shape):
            raise TLMError(f"imported parameter {jax.tree_util.keystr(path)} has shape "
                           f"{np.shape(a)}, the model wants {tuple(b.shape)}",
                           "report this as a bug in tlm_jax.hf")


def import_hf(src: str | Path, workdir: str | Path, overrides: Sequence[str] = (), *,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Turn an HF BERT checkpoint directory into a run directory (see :mod:`tlm_jax.hf`).

    Returns a summary dict (architecture, parameters, files written, unused tensors).
    """
    src, out = Path(src).expanduser().resolve(), Path(workdir).expanduser().resolve()
    hf = read_hf_config(src)
    hf_architecture(hf, where=str(src / "config.json"))  # refuse e.g. RoBERTa before reading
    mfields = hf_to_model_config(hf, str(src / "config.json"))
    tok, lowercase, tok_name = import_tokenizer(src)
    sp = special_tokens(tok)
    if sp.vocab_size > mfields["vocab_size"]:
        raise TLMError(f"{src / tok_name} has {sp.vocab_size} tokens but config.json vocab_size "
                       f"is {mfields['vocab_size']}", "use the checkpoint's own tokenizer")
    sd, files = read_hf_weights(src)
    arch = hf_architecture(hf, sd, str(src / "config.json"))
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise TLMError(f"{out} already holds a run (checkpoints/)", "use a new --workdir")
    tok_path = out / "tokenizer.json"
    cfg = _build_config(mfields, tok_path, lowercase, f"import-hf:{src.name}", overrides)
    params, extras = hf_state_to_params(sd, cfg.model, arch, f"{src.name}/{files[0]}")

    model = build_model(cfg.model)
    abstract = jax.eval_shape(lambda r: unbox(init_variables(model, r, cfg.data.max_len)),
                              jax.random.PRNGKey(0))
    _check_tree(params, abstract["params"])
    if any(k != "params" for k in abstract):
        raise TLMError("the model has non-parameter state HF BERT cannot provide",
                       "report this as a bug in tlm_jax.hf")
    jparams = jax.tree.map(jnp.asarray, params)
    tx, _ = make_optimizer(cfg.optim, max(cfg.train.steps, 1))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=jparams, opt_state=tx.init(jparams),
                       model_state={}, rng=jax.random.PRNGKey(cfg.train.seed))
    meta = {"config": to_dict(cfg), "tokenizer_hash": tokenizer_hash(tok), "step": 0,
            "imported_from": str(src), "hf_architecture": arch}
    written = ["config.json", "tokenizer.json", "checkpoints/0"]
    # Written aside and published at the end, checkpoints/ last: a run directory with a
    # config.json but no checkpoint would start pretraining from random weights.
    with staged_dir(out, "the run directory", last="checkpoints") as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        save_config(cfg, tmp / "config.json")  # its data.tokenizer names out/tokenizer.json
        if "classifier" in extras:
            np.savez(tmp / "classifier.npz", **extras["classifier"])
            n_labels = len(extras["classifier"]["classifier_bias"])
            id2label = hf.get("id2label") or {str(i): f"LABEL_{i}" for i in range(n_labels)}
            (tmp / "classifier.json").write_text(json.dumps({
                "num_labels": n_labels, "id2label": id2label,
                "problem_type": hf.get("problem_type"), "pooling": "cls+tanh pooler",
                "source": str(src)}, indent=2) + "\n")
            written += ["classifier.npz", "classifier.json"]
        ckpt = Checkpointer(tmp / "checkpoints", every=1, keep=cfg.train.keep_checkpoints,
                            async_save=False, log=log)
        try:
            ckpt.save(0, state, {}, meta, force=True)
        except TLMError as e:
            failed = write_failure(e.__cause__) if ckpt.write_failed and e.__cause__ else None
            if failed is None:
                raise
            # The checkpoint's own message names the private directory, gone once this is raised.
            raise TLMError(f"cannot write the run directory {out}: {failed[0]}",
                           f"{failed[1]}, then run again (nothing partial was kept)") from e
        finally:
            ckpt.close()
    n_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    summary = {"architecture": arch, "parameters": n_params, "workdir": str(out),
               "written": written, "unused_tensors": extras["unused"],
               "fresh_mlm_head": bool(extras.get("fresh_mlm_head")), "weights": files}
    log(f"imported {arch} ({n_params:,} parameters) from {src} into {out}: "
        f"{', '.join(written)}")
    if extras["unused"]:
        log(f"not imported: {', '.join(extras['unused'][:8])}"
            f"{' ...' if len(extras['unused']) > 8 else ''}")
    if extras.get("fresh_mlm_head"):
        log("the checkpoint has no MLM head: a freshly initialised one was added")
    return summary
