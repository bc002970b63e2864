"""The ``tlm`` command.

Errors the user can fix print one line (``error: cause (fix: ...)``) and exit
with status 2 (3: a run stopped by a non-finite loss); any other exception prints one
``internal error: ...`` line and exits with status 1. ``--debug`` (or ``TLM_DEBUG=1``)
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import re
import sys
from collections.abc import Sequence

from tlm_jax import commands
from tlm_jax.errors import TLMError


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from tlm_jax.commands._checks import output_dir  # noqa: PLC0415 - keep `tlm --help` fast
    from tlm_jax.config import load_config  # noqa: PLC0415
    from tlm_jax.train.loop import pretrain  # noqa: PLC0415

    output_dir(args.workdir, "--workdir")
    cfg = load_config(args.config, args.overrides)
    summary = pretrain(cfg, args.workdir)
    fv, lv = summary.get("first_val") or {}, summary.get("final_val") or {}
    print(f"done: {summary['steps']} steps in {summary['seconds']}s; "
          f"val loss {fv.get('loss', float('nan')):.4f} -> {lv.get('loss', float('nan')):.4f}")
    print(f"outputs in {args.workdir}: config.json tokenizer.json metrics.jsonl checkpoints/ "
          "tensorboard/ summary.json")
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    from tlm_jax.commands._checks import MAX_INT, check_option  # noqa: PLC0415
    from tlm_jax.config import MODEL_PRESETS, unknown_preset  # noqa: PLC0415
    from tlm_jax.models.summary import parameter_table  # noqa: PLC0415

    check_option("--vocab-size", args.vocab_size, lambda v: 1 <= v <= MAX_INT,
                 "a positive vocabulary size")
    for name in args.presets:  # every name checked before the first is counted
        if name not in MODEL_PRESETS:
            raise unknown_preset(name)
    print(parameter_table(args.presets or None, vocab_size=args.vocab_size, as_json=args.json))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from tlm_jax.config import load_config, to_dict  # noqa: PLC0415

    print(json.dumps(to_dict(load_config(args.config, args.overrides)), indent=2))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one ``error: ...`` line (exit status 2), like TLMError's."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {_short_words(message)} (fix: see `{self.prog} --help`)\n")


def _short_words(text: str, limit: int = 100) -> str:
    """``text`` on one line, each run of over ``limit`` non-blank characters (a pasted blob, a
    huge value quoted back) elided in the middle, so an error stays one readable line."""
    return re.sub(rf"\S{{{limit + 1},}}", lambda m: f"{m.group()[:limit - 20]}...{m.group()[-17:]}",
                  " ".join(text.split()))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands register here)."""
    p = _Parser(prog="tlm", description="Tiny language models in JAX.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    pre = sub.add_parser("pretrain", help="pretrain a model (resumes if --workdir has a run)")
    pre.add_argument("--config", default=None, help="YAML config path or name in configs/")
    pre.add_argument("--workdir", required=True)
    pre.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=300")
    pre.set_defaults(func=_cmd_pretrain)

    par = sub.add_parser("params", help="print parameter counts of model presets")
    par.add_argument("presets", nargs="*")
    par.add_argument("--vocab-size", type=int, default=30522)
    par.add_argument("--json", action="store_true")
    par.set_defaults(func=_cmd_params)

    cfg = sub.add_parser("config", help="print the resolved config")
    cfg.add_argument("--config", default=None)
    cfg.add_argument("overrides", nargs="*")
    cfg.set_defaults(func=_cmd_config)
    # Every module in tlm_jax/commands adds its own subcommands (finetune, import-hf, ...);
    # ``_name`` modules are helpers.
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"tlm_jax.commands.{info.name}").add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tlm``; returns the exit status (2 for a usage error or a TLMError)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, its line already printed)
        return e.code if isinstance(e.code, int) else 0
    try:
        return int(args.func(args) or 0)
    except TLMError as e:
        if args.debug or os.environ.get("TLM_DEBUG"):
            raise
        print(f"error: {_short_words(e.one_line())}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; the newest complete checkpoint is kept", file=sys.stderr)
        return 130
    except Exception as e:  # the last line of defence: no user sees a traceback without --debug
        if args.debug or os.environ.get("TLM_DEBUG"):
            raise
        msg = " ".join(str(e).split())[:300] or "(no message)"
        print(f"internal error: {type(e).__name__}: {msg} (run with --debug for the traceback; "
              "please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
