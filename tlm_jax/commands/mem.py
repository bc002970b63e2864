"""``tlm mem``: per-device memory of the train state (params + AdamW mu/nu) on a mesh.

Computed from abstract shapes (``jax.eval_shape``) and the shardings on a
device-less ``AbstractMesh``, so a pod-sized mesh can be sized on a laptop.
Activations are not included: they depend on the batch, remat and XLA.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tlm_jax.errors import TLMError


def parse_mesh(text: str) -> dict[str, int]:
    """``data=1,fsdp=8,tensor=1`` -> sizes (missing axes: data=-1, fsdp=1, tensor=1)."""
    sizes = {"data": -1, "fsdp": 1, "tensor": 1}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, val = part.partition("=")
        if not sep or key not in sizes:
            raise TLMError(f"bad --mesh entry '{part}'", "write e.g. data=1,fsdp=8,tensor=1")
        try:
            sizes[key] = int(val)
        except ValueError:
            raise TLMError(f"bad --mesh size '{val}' for {key}", "use an integer (or -1)") from None
    return sizes


def memory_report(cfg: Any, mesh: dict[str, int] | None = None, devices: int | None = None,
                  token_classes: int | None = None) -> dict[str, Any]:
    """Per-device bytes of the train state of ``cfg`` on a mesh of ``devices`` devices.

    ``mesh`` defaults to ``cfg.mesh``; ``devices`` to the product of the mesh sizes
    (or the real device count when one axis is -1). The vocabulary is
    ``model.vocab_size`` or, unset, ``data.vocab_size`` padded as training pads it.
    """
    import jax  # noqa: PLC0415 - keep --help fast

    from tlm_jax import sharding as shd  # noqa: PLC0415
    from tlm_jax.data.tokenizer import SpecialTokens  # noqa: PLC0415
    from tlm_jax.models import build_model  # noqa: PLC0415
    from tlm_jax.objectives import build_objectives  # noqa: PLC0415
    from tlm_jax.train.loop import padded_vocab, total_steps  # noqa: PLC0415
    from tlm_jax.train.optimizer import make_optimizer  # noqa: PLC0415
    from tlm_jax.train.state import state_memory  # noqa: PLC0415

    sizes = dict(mesh or {"data": cfg.mesh.data, "fsdp": cfg.mesh.fsdp, "tensor": cfg.mesh.tensor})
    if devices is None:
        devices = (len(jax.devices()) if -1 in sizes.values()
                   else sizes["data"] * sizes["fsdp"] * sizes["tensor"])
    amesh = shd.abstract_mesh(sizes["data"], sizes["fsdp"], sizes["tensor"], devices)
    vocab = cfg.model.vocab_size or padded_vocab(cfg.data.vocab_size)
    cfg.model.vocab_size = vocab
    shd.check_model_fits(amesh, vocab=vocab, hidden=cfg.model.hidden, heads=cfg.model.heads,
                         intermediate=cfg.model.intermediate,
                         batch=cfg.train.batch_size // max(cfg.optim.grad_accum, 1))
    if token_classes is None:  # objectives that add per-token heads (e.g. RTS) size the model
        special = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=vocab)
        try:
            objs = build_objectives(cfg.objective, special, cfg.data.max_len)
            token_classes = max((o.token_classes for o, _ in objs), default=0)
        except TLMError:
            raise
        except Exception:  # an objective that needs the corpus to be built
            token_classes = 0
    model = build_model(cfg.model, token_classes=token_classes)
    tx, _ = make_optimizer(cfg.optim, total_steps(cfg, 1) if cfg.train.steps else 1)
    mem = state_memory(model, tx, amesh, cfg.data.max_len)
    return {"preset": cfg.model.preset, "arch": cfg.model.arch, "vocab_size": vocab,
            "mesh": dict(zip(amesh.axis_names, amesh.axis_sizes, strict=True)),
            "devices": devices, "bytes": mem}


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB"


def format_report(rep: dict[str, Any]) -> str:
    """A small table of per-device and unsharded sizes."""
    mesh = ",".join(f"{k}={v}" for k, v in rep["mesh"].items())
    lines = [f"{rep['preset']} ({rep['arch']}, vocab {rep['vocab_size']}) on {rep['devices']} "
             f"devices, mesh {mesh}",
             f"{'':12s} {'per device':>14s} {'unsharded':>14s}"]
    names = {"params": "params", "opt_state": "adamw mu+nu", "other": "other",
             "total": "total"}
    for key, label in names.items():
        b = rep["bytes"][key]
        lines.append(f"{label:12s} {_mib(b['per_device']):>14s} {_mib(b['total']):>14s}")
    lines.append("(train state only: activations, gradients and XLA buffers come on top)")
    return "\n".join(lines)


def _cmd_mem(args: argparse.Namespace) -> int:
    from tlm_jax.config import load_config  # noqa: PLC0415

    cfg = load_config(args.config, args.overrides)
    rep = memory_report(cfg, parse_mesh(args.mesh) if args.mesh else None, args.devices)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tlm mem``."""
    m = sub.add_parser("mem", help="per-device memory of params + optimizer state on a mesh")
    m.add_argument("--config", default=None, help="YAML config path or name in configs/")
    m.add_argument("--mesh", default=None, help="e.g. data=1,fsdp=8,tensor=1 (default: mesh.*)")
    m.add_argument("--devices", type=int, default=None,
                   help="device count (default: the mesh product; needed when an axis is -1)")
    m.add_argument("--json", action="store_true")
    m.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.preset=bert-6")
    m.set_defaults(func=_cmd_mem)
