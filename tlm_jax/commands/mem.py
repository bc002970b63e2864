"""``tlm mem``: per-device memory of the train state (params + AdamW mu/nu) on a mesh.

Computed from abstract shapes (``jax.eval_shape``) and the shardings on a
device-less ``AbstractMesh``, so a pod-sized mesh can be sized on a laptop.
Activations are not included: they depend on the batch, remat and XLA.

With ``model.linear=sltrain`` (or ``spdf``) it also sizes the same config with dense
projections and prints the two side by side: parameters (all, and the attention/MLP
projections alone), params, AdamW state and buffers (SLTrain's index, SPDF's masks).
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any

from tlm_jax.errors import TLMError


def parse_mesh(text: str) -> dict[str, int]:
    """``data=1,fsdp=8,tensor=1`` -> sizes (missing axes: data=-1, fsdp=1, tensor=1)."""
    sizes = {"data": -1, "fsdp": 1, "tensor": 1}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, val = part.partition("=")
        if not sep or key not in sizes:
            raise TLMError(f"bad --mesh entry '{part[:40]}'", "write e.g. data=1,fsdp=8,tensor=1")
        try:
            sizes[key] = int(val)
        except ValueError:
            raise TLMError(f"bad --mesh size '{val[:30]}' for {key}", "use an integer (or -1)") from None
        if not (sizes[key] == -1 or 1 <= sizes[key] < 2**31):
            raise TLMError(f"--mesh {key}={val[:30]} is invalid", "use a positive size, or -1 for "
                           "the remaining devices")
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
    from tlm_jax.data.tokenizer import (
        SpecialTokens,  # noqa: PLC0415
        padded_vocab,  # noqa: PLC0415
    )
    from tlm_jax.models import build_model, init_variables  # noqa: PLC0415
    from tlm_jax.models.sparse import projection_param_count  # noqa: PLC0415
    from tlm_jax.objectives import build_objectives  # noqa: PLC0415
    from tlm_jax.train.optimizer import make_optimizer  # noqa: PLC0415
    from tlm_jax.train.run import total_steps  # noqa: PLC0415
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
    params = jax.eval_shape(lambda r: shd.unbox(init_variables(model, r, cfg.data.max_len)),
                            jax.random.PRNGKey(0))["params"]
    return {"preset": cfg.model.preset, "arch": cfg.model.arch, "vocab_size": vocab,
            "linear": cfg.model.linear,
            "mesh": dict(zip(amesh.axis_names, amesh.axis_sizes, strict=True)),
            "devices": devices, "bytes": mem,
            "parameters": int(sum(x.size for x in jax.tree.leaves(params))),
            "projection_parameters": projection_param_count(params)}


def linear_comparison(cfg: Any, mesh: dict[str, int] | None = None,
                      devices: int | None = None) -> dict[str, Any]:
    """:func:`memory_report` of ``cfg`` with ``"dense"``: the same config with dense projections."""
    dense_cfg = copy.deepcopy(cfg)
    dense_cfg.model.linear = "dense"
    rep = memory_report(cfg, mesh, devices)
    rep["dense"] = memory_report(dense_cfg, mesh, devices)
    return rep


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB"


def format_report(rep: dict[str, Any]) -> str:
    """A small table of per-device and unsharded sizes."""
    mesh = ",".join(f"{k}={v}" for k, v in rep["mesh"].items())
    linear = f", linear {rep['linear']}" if rep.get("linear", "dense") != "dense" else ""
    lines = [f"{rep['preset']} ({rep['arch']}, vocab {rep['vocab_size']}{linear}) on "
             f"{rep['devices']} devices, mesh {mesh}",
             f"{'':12s} {'per device':>14s} {'unsharded':>14s}"]
    names = {"params": "params", "opt_state": "adamw mu+nu", "other": "other",
             "total": "total"}
    for key, label in names.items():
        b = rep["bytes"][key]
        lines.append(f"{label:12s} {_mib(b['per_device']):>14s} {_mib(b['total']):>14s}")
    lines.append("(train state only: activations, gradients and XLA buffers come on top)")
    if "dense" in rep:
        lines += ["", _comparison(rep, rep["dense"])]
    return "\n".join(lines)


def _comparison(rep: dict[str, Any], dense: dict[str, Any]) -> str:
    kind = rep["linear"]
    lines = [f"model.linear={kind} vs dense (unsharded):",
             f"{'':16s} {'dense':>14s} {kind:>14s} {'ratio':>7s}"]
    rows = [("parameters", dense["parameters"], rep["parameters"], "{:,}"),
            ("  projections", dense["projection_parameters"], rep["projection_parameters"],
             "{:,}")]
    names = {"params": "params", "opt_state": "adamw mu+nu", "other": "other (buffers)",
             "total": "total"}
    rows += [(label, dense["bytes"][k]["total"], rep["bytes"][k]["total"], "mib")
             for k, label in names.items()]
    for label, d, s, fmt in rows:
        ds, ss = (_mib(d), _mib(s)) if fmt == "mib" else (fmt.format(d), fmt.format(s))
        # The dense model has no buffers worth a ratio (the step counter and RNG key).
        ratio = f"{s / d:.3f}" if d and label != "other (buffers)" else "-"
        lines.append(f"{label:16s} {ds:>14s} {ss:>14s} {ratio:>7s}")
    return "\n".join(lines)


def _cmd_mem(args: argparse.Namespace) -> int:
    from tlm_jax.commands._checks import MAX_INT, check_option  # noqa: PLC0415
    from tlm_jax.config import load_config  # noqa: PLC0415

    if args.devices is not None:
        check_option("--devices", args.devices, lambda v: 1 <= v <= MAX_INT, "a positive device count")
    mesh = parse_mesh(args.mesh) if args.mesh else None
    cfg = load_config(args.config, args.overrides)
    rep = (memory_report(cfg, mesh, args.devices) if cfg.model.linear == "dense"
           else linear_comparison(cfg, mesh, args.devices))
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
