"""``tlm import-hf`` and ``tlm export-hf``: Hugging Face BERT checkpoints <-> tlm_jax runs.

    tlm import-hf ./bert-mini --workdir runs/bert-mini [data.max_len=64 ...]
    tlm export-hf runs/bert6-wiki20k --out hf/bert6-wiki20k [--force]

See :mod:`tlm_jax.hf` for the layouts, the parameter mapping and what the run
directory written by ``import-hf`` holds.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def _import(args: argparse.Namespace) -> int:
    from tlm_jax.commands._checks import input_dir, output_dir  # noqa: PLC0415
    from tlm_jax.hf import import_hf  # noqa: PLC0415 - keep `tlm --help` fast

    input_dir(args.source, "SOURCE", "a transformers checkpoint directory: config.json, weights, "
              "vocab.txt")
    output_dir(args.workdir, "--workdir")
    s = import_hf(args.source, args.workdir, args.overrides)
    print(f"run directory {s['workdir']}: use it with `tlm finetune --pretrained {s['workdir']}`, "
          f"`tlm export-hf {s['workdir']} --out DIR`, or continue pretraining with "
          f"`tlm pretrain --config {s['workdir']}/config.json --workdir {s['workdir']}`")
    return 0


def _export(args: argparse.Namespace) -> int:
    from tlm_jax.commands._checks import input_dir, output_dir  # noqa: PLC0415
    from tlm_jax.hf import export_hf  # noqa: PLC0415 - keep `tlm --help` fast

    input_dir(args.run, "RUN", "a run directory of `tlm pretrain` or `tlm import-hf`")
    output_dir(args.out, "--out")
    s = export_hf(args.run, args.out, force=args.force)
    print(f"load it with transformers.BertForMaskedLM.from_pretrained({s['out']!r}) and "
          f"BertTokenizerFast.from_pretrained({s['out']!r})")
    return 0


def _options_first(parser: argparse.ArgumentParser) -> None:
    """Let ``key=value`` overrides follow options (``DIR --workdir OUT a=b``).

    argparse (before Python 3.12's intermixed fixes) fills all positionals at the
    first positional group, so positionals after an option are "unrecognized";
    moving the options in front of the positionals avoids that.
    """
    parse = parser.parse_known_args
    takes_value = {o for a in parser._actions for o in a.option_strings if a.nargs != 0}

    def reordered(args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        if args is None:
            return parse(args, namespace)
        opts: list[str] = []
        pos: list[str] = []
        items = list(args)
        while items:
            a = items.pop(0)
            if a == "--":
                pos += ["--", *items]
                break
            if a.startswith("-") and a != "-":
                opts.append(a)
                if a in takes_value and items:
                    opts.append(items.pop(0))
            else:
                pos.append(a)
        return parse(opts + pos, namespace)

    parser.parse_known_args = reordered  # type: ignore[method-assign]


def add_parser(sub: Any) -> None:
    """Register ``tlm import-hf`` and ``tlm export-hf``."""
    imp = sub.add_parser(
        "import-hf", help="turn a Hugging Face BERT checkpoint directory into a tlm_jax run",
        description="Import config.json + model.safetensors/pytorch_model.bin + "
        "tokenizer.json/vocab.txt (BertForMaskedLM, BertForPreTraining, "
        "BertForSequenceClassification, BertModel) as a run directory with an Orbax checkpoint "
        "at step 0.")
    imp.add_argument("source", help="HF model directory")
    imp.add_argument("--workdir", required=True, help="run directory to create")
    imp.add_argument("overrides", nargs="*",
                     help="key=value settings for the run's config.json (not model shape keys)")
    imp.set_defaults(func=_import)
    _options_first(imp)

    exp = sub.add_parser(
        "export-hf", help="write a run's newest checkpoint as a Hugging Face BertForMaskedLM",
        description="Write config.json, model.safetensors, vocab.txt, tokenizer.json, "
        "tokenizer_config.json and special_tokens_map.json for transformers.")
    exp.add_argument("run", help="run directory (from `tlm pretrain` or `tlm import-hf`)")
    exp.add_argument("--out", required=True, help="output directory")
    exp.add_argument("--force", action="store_true", help="write into a non-empty --out")
    exp.set_defaults(func=_export)
