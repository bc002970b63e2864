"""``tlm generate``: sample text from a trained causal LM run."""

from __future__ import annotations

import argparse
import json


def check_sampling_options(args: argparse.Namespace) -> None:
    """Refuse ``tlm generate`` options that cannot work, before the run is loaded."""
    from tlm_jax.commands._checks import MAX_INT, check_option, finite, input_dir  # noqa: PLC0415

    check_option("--max-new", args.max_new, lambda v: 1 <= v <= MAX_INT,
                 "a positive number of tokens")
    check_option("--temperature", args.temperature, lambda v: finite(v) and v >= 0,
                 "a finite number >= 0 (0 = greedy)")
    check_option("--top-k", args.top_k, lambda v: 0 <= v <= MAX_INT, ">= 0 (0 = off)")
    check_option("--top-p", args.top_p, lambda v: finite(v) and 0 < v <= 1, "in (0, 1] (1 = off)")
    check_option("--num-samples", args.num_samples, lambda v: 1 <= v <= MAX_INT, "at least 1")
    check_option("--seed", args.seed, lambda v: 0 <= v < 2**32, "in [0, 2**32)")
    if args.step is not None:
        check_option("--step", args.step, lambda v: 0 <= v <= MAX_INT, "a checkpoint step >= 0")
    input_dir(args.run, "--run", "the --workdir of a `tlm pretrain` with model.arch=gpt")


def _cmd_generate(args: argparse.Namespace) -> int:
    from tlm_jax.generate import Generator, Sampling  # noqa: PLC0415 - keep --help fast
    from tlm_jax.train.pretrained import load_run  # noqa: PLC0415 - keep --help fast

    check_sampling_options(args)
    run = load_run(args.run, step=args.step)
    gen = Generator(run)
    s = Sampling(max_new=args.max_new, temperature=args.temperature, top_k=args.top_k,
                 top_p=args.top_p, greedy=args.greedy, seed=args.seed)
    texts = gen.generate(args.prompt, s, num_samples=args.num_samples, control=args.control,
                         include_prompt=True)
    if args.json:
        print(json.dumps({"run": str(run.path), "step": run.step, "prompt": args.prompt,
                          "control": args.control, "samples": texts}, indent=2))
    else:
        for i, t in enumerate(texts):
            prefix = f"[{i}] " if len(texts) > 1 else ""
            print(f"{prefix}{t}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tlm generate``."""
    g = sub.add_parser("generate", help="sample text from a causal LM run (model.arch=gpt)")
    g.add_argument("--run", required=True, help="a tlm pretrain workdir")
    g.add_argument("--prompt", default="", help="text to continue (default: from scratch)")
    g.add_argument("--max-new", type=int, default=48, help="tokens to generate at most")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (1 = off)")
    g.add_argument("--greedy", action="store_true", help="argmax decoding (deterministic)")
    g.add_argument("--num-samples", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    g.add_argument("--control", default=None,
                   help="a control token to condition on, e.g. '<|good|>' (conditional training)")
    g.add_argument("--json", action="store_true", help="print the samples as JSON")
    g.set_defaults(func=_cmd_generate)
