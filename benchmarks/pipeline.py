"""Data benchmarks: tokenizer training + token-cache build, and the input pipeline rate.

    TLM_DATA_DIR=/work/shared/data python -m benchmarks.pipeline [--step-tokens-per-s X] [--json]

1. ``prepare_corpus`` on the Wikipedia excerpt with a fresh cache dir: WordPiece
   training and token-cache build throughput (words/s and tokens/s; the time of
   each stage is read from the timestamps of the cache's log lines).
2. Input pipeline: token cache -> ``make_dataset``/``make_iterator`` (grain,
   prefetch) -> ``jax.make_array_from_process_local_data`` on the batch sharding,
   blocked until ready: tokens/s, compared with the train step's token rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TLM_CACHE_DIR", "/tmp/tlmcache_bench")
os.environ.setdefault("TLM_DATA_DIR", "/work/shared/data")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import machine  # noqa: E402
from tlm_jax import sharding as shd
from tlm_jax.config import load_config
from tlm_jax.data.corpus import prepare_corpus
from tlm_jax.data.pipeline import ExampleSource, make_dataset, make_iterator


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num-docs", type=int, default=6000)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--step-tokens-per-s", type=float, default=0.0,
                   help="the train step's rate (from benchmarks.train_step) for the ratio")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    info = machine()
    print(f"# {info}", flush=True)
    cache = tempfile.mkdtemp(prefix="tlm-bench-cache-")
    cfg = load_config(None, [
        "data.source=wikiextractor", "data.paths=[$TLM_DATA_DIR/wikipedia_en_excerpt/*.gz]",
        "data.subset=random", f"data.num_docs={a.num_docs}", "data.val_docs=200",
        f"data.vocab_size={a.vocab}", f"data.max_len={a.seq}", f"data.cache_dir={cache}"])
    stamps: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    corpus = prepare_corpus(cfg.data, progress=False,
                            log=lambda m: stamps.append((time.perf_counter() - t0, m)))
    prep_s = time.perf_counter() - t0
    n_train_tokens = int(len(corpus.train.tokens))
    res: dict[str, Any] = {"cpu": info["cpu"], "cores": info["cores"], "jax": info["jax"],
                           "date": info["date"], "prepare_corpus_s": prep_s,
                           "train_docs": len(corpus.train), "train_tokens": n_train_tokens,
                           "prepare_tokens_per_s": n_train_tokens / prep_s,
                           "log": [f"{t:.1f}s {m}" for t, m in stamps]}
    print(f"prepare_corpus (subset + WordPiece {a.vocab} + token cache), fresh cache, "
          f"{len(corpus.train)} train docs, {n_train_tokens:,} tokens: {prep_s:.1f}s "
          f"= {n_train_tokens / prep_s:,.0f} tokens/s end to end")
    for t, m in stamps:
        print(f"   {t:7.1f}s  {m}")

    # Input pipeline.
    mesh = shd.make_mesh(-1, 1, 1, devices=jax.devices()[:1])
    src = ExampleSource(corpus.train, corpus.special, a.seq, "pack")
    ds = make_dataset(src, a.batch, seed=0)
    it = make_iterator(ds, prefetch=2)

    def to_dev(b: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {k: jax.make_array_from_process_local_data(shd.batch_sharding(mesh, v.ndim), v)
                for k, v in b.items()}

    for _ in range(10):
        jax.block_until_ready(to_dev(next(it)))
    t0 = time.perf_counter()
    for _ in range(a.batches):
        jax.block_until_ready(to_dev(next(it)))
    dt = time.perf_counter() - t0
    rate = a.batches * a.batch * a.seq / dt
    res["pipeline_tokens_per_s"] = rate
    res["pipeline_batches_per_s"] = a.batches / dt
    print(f"input pipeline (pack, batch {a.batch} x {a.seq}, grain prefetch 2, device put): "
          f"{a.batches / dt:,.1f} batches/s = {rate:,.0f} tokens/s")
    if a.step_tokens_per_s:
        res["step_tokens_per_s"] = a.step_tokens_per_s
        res["pipeline_vs_step"] = rate / a.step_tokens_per_s
        print(f"  vs train step {a.step_tokens_per_s:,.0f} tokens/s: "
              f"{rate / a.step_tokens_per_s:,.1f}x (target >= 10x)")
    if a.json:
        print(json.dumps(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
