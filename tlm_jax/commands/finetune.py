"""``tlm finetune``: fine-tune a pretrained run (or its random-init twin) on a classification task.

    tlm finetune --pretrained RUN --task ag_news --workdir OUT --seeds 0,1,2
    tlm finetune --pretrained none --tokenizer-from RUN --task ag_news --workdir OUT_TWIN
    tlm finetune --pretrained RUN --task csv:reviews.csv --workdir OUT \\
        task.text_columns=[review] task.label_column=stars

``--pretrained none`` builds the same architecture with random weights; it
needs a vocabulary, taken from ``--tokenizer-from`` (a run directory: that run's
tokenizer *and* architecture, i.e. its exact twin; or a tokenizer.json /
vocab.txt file, with the architecture from ``model.*`` overrides).
Settings: ``--config`` (a YAML with task/head/optim/train sections, e.g.
configs/finetune-paper.yaml) then ``key=value`` overrides; see
:class:`tlm_jax.tasks.finetune.FinetuneConfig`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tlm_jax.errors import TLMError


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise TLMError(f"--seeds {text[:60]!r} is not a comma-separated list of integers",
                       "write e.g. --seeds 0,1,2") from e
    if not seeds:
        raise TLMError("--seeds is empty", "write e.g. --seeds 0,1,2")
    bad = [s for s in seeds if not 0 <= s < 2**32]
    if bad:
        raise TLMError(f"--seeds: {str(bad[0])[:30]} is outside [0, 2**32)", "use small non-negative seeds")
    return seeds


def _run(args: argparse.Namespace) -> int:
    from tlm_jax.commands._checks import input_dir, output_dir  # noqa: PLC0415
    from tlm_jax.tasks.finetune import finetune, load_finetune_config  # noqa: PLC0415

    output_dir(args.workdir, "--workdir")
    pretrained = None if args.pretrained.lower() == "none" else args.pretrained
    if pretrained is not None:
        input_dir(pretrained, "--pretrained", "the --workdir of a `tlm pretrain`, or none")
    if args.tokenizer_from is not None and not Path(args.tokenizer_from).expanduser().exists():
        raise TLMError(f"--tokenizer-from {args.tokenizer_from} does not exist",
                       "pass a run directory, a tokenizer.json or a vocab.txt")
    seeds = _seeds(args.seeds)
    cfg = load_finetune_config(args.config, args.overrides, task=args.task)
    res: dict[str, Any] = finetune(cfg, pretrained, args.workdir, seeds,
                                   tokenizer_from=args.tokenizer_from, overrides=args.overrides)
    acc, f1 = res["accuracy"], res["macro_f1"]
    print(f"done: {res['task']} ({res['pretrained']['init']}), {len(res['seeds'])} seed(s): "
          f"accuracy {acc['mean']:.4f} ± {acc['ci95']:.4f}, macro-F1 {f1['mean']:.4f} ± "
          f"{f1['ci95']:.4f}")
    if "baseline" in res:
        b = res["baseline"]["accuracy"]
        print(f"TF-IDF + logistic regression on the same splits: accuracy {b['mean']:.4f} ± "
              f"{b['ci95']:.4f}")
    print(f"results in {args.workdir}/results.json (per seed: seed_<s>/results.json)")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``tlm finetune``."""
    p = sub.add_parser("finetune", help="fine-tune a pretrained run (or a random-init twin) on a "
                       "classification task",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", required=True,
                   help="a `tlm pretrain` run directory, or 'none' for the random-init twin")
    p.add_argument("--task", required=True,
                   help="ag_news | dbpedia | fewrel | synthetic | csv:PATH | tsv:PATH | jsonl:PATH | "
                   "tfds:NAME")
    p.add_argument("--workdir", required=True, help="output directory (results.json, seed_<s>/)")
    p.add_argument("--tokenizer-from", default=None,
                   help="for --pretrained none: a run directory (its twin) or a tokenizer file")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--config", default=None, help="YAML with task/head/optim/train sections")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. task.train_per_class=200 "
                   "train.epochs=5 head.pooling=mean head.freeze_encoder=true")
    p.set_defaults(func=_run)
