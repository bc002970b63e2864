"""``tlm export-hf``: a run's newest checkpoint becomes an HF ``BertForMaskedLM`` directory.

Both directions write a private directory beside the destination and publish it at the end
(:func:`staged_dir`), so a command killed or refused half-way leaves no half-written export or
run directory for a later command to pick up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
from safetensors.numpy import save_file

from tlm_jax import sharding as shd
from tlm_jax.config import Config, read_config
from tlm_jax.data.cache import writing
from tlm_jax.data.tokenizer import load_tokenizer, special_tokens
from tlm_jax.errors import TLMError
from tlm_jax.hf.mapping import check_exportable, model_config_to_hf, params_to_hf_state
from tlm_jax.hf.tokenizer import export_tokenizer, vocab_list
from tlm_jax.train.pretrained import load_pretrained_variables


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _sync(path: Path) -> None:
    """``fsync`` a file or directory (a directory's entries: the renames into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, out: Path, last: str) -> None:
    """Make ``tmp``'s files ``out``'s: one rename when ``out`` is missing or empty; otherwise file
    by file, ``out/last`` removed first and moved in last, so until the end ``out`` visibly lacks
    it (the weights of an export, the checkpoints of a run) and no command takes it for complete.

    The bytes reach the disk before the names do, so not even a power cut publishes a file whose
    contents were still in the page cache.
    """
    for f in sorted(tmp.rglob("*")):
        if f.is_file() and not f.is_symlink():
            _sync(f)
    try:
        os.rename(tmp, out)  # replaces an empty directory in one step
        _sync(out.parent)
        return
    except OSError:
        if not out.is_dir():
            raise
    target = out / last
    if target.is_file() or target.is_symlink():
        target.unlink()
    for item in sorted(tmp.iterdir()):
        if item.name != last:
            if (out / item.name).is_dir() and not (out / item.name).is_symlink():
                shutil.rmtree(out / item.name)
            os.replace(item, out / item.name)
    os.replace(tmp / last, target)  # ``last``, when a directory, replaces an empty one only
    _sync(out)
    tmp.rmdir()


@contextlib.contextmanager
def staged_dir(out: Path, what: str, last: str) -> Iterator[Path]:
    """A private directory beside ``out`` to write into; published as ``out`` when the block ends.

    A block that fails removes it (a refused write becomes one line naming ``what``); a killed
    process leaves ``.<name>.partial-<pid>-*``, removed by the next command writing ``out`` once
    that process is gone. ``last``: see :func:`_publish`.
    """
    with writing(f"{what} {out.name}", out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(rf"\.{re.escape(out.name)}\.partial-(\d+)-")
        for stale in out.parent.iterdir():
            m = pattern.match(stale.name)
            if m and not _alive(int(m.group(1))):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
        try:
            yield tmp
            _publish(tmp, out, last)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


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
    hf_cfg = model_config_to_hf(cfg.model, n_vocab, sp.pad)
    with staged_dir(out, "the export", last="model.safetensors") as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True) + "\n")
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        export_tokenizer(tok, tmp, cfg.model.max_len)
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
