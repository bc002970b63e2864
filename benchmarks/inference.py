"""Fine-tuned-classifier-shaped inference latency: encoder forward + a small head.

    python -m benchmarks.inference [--models bert-1-cpu,bert-6-cpu] [--batches 1,256] [--json]

Ours: jitted ``BertModel.encode`` (deterministic, f32) + a dense head on [CLS] (2 classes).
Torch: ``BertForSequenceClassification`` (same shape, vocab 16384, f32, eval,
``torch.inference_mode``). Same process, timed round-robin; median latency per call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

os.environ.setdefault("TLM_CACHE_DIR", "/tmp/tlmcache_bench")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import interleaved, machine  # noqa: E402

VOCAB = 16384


def build_ours(preset: str, batch: int, seq: int, dtype: str) -> Any:
    from tlm_jax.config import load_config  # noqa: PLC0415
    from tlm_jax.models import build_model, init_variables  # noqa: PLC0415
    from tlm_jax.sharding import unbox  # noqa: PLC0415

    cfg = load_config(None, [f"model.preset={preset}", f"model.vocab_size={VOCAB}",
                             f"model.dtype={dtype}"])
    model = build_model(cfg.model)
    params = unbox(init_variables(model, jax.random.key(0), seq))["params"]
    head = {"w": jnp.zeros((cfg.model.hidden, 2)), "b": jnp.zeros((2,))}
    ids = jnp.asarray(np.random.default_rng(0).integers(5, VOCAB, (batch, seq)), jnp.int32)
    mask = jnp.ones((batch, seq), jnp.int32)

    @jax.jit
    def fwd(params, head, ids, mask):
        h = model.apply({"params": params}, {"input_ids": ids, "attention_mask": mask},
                        deterministic=True, method=model.encode)
        return h[:, 0].astype(jnp.float32) @ head["w"] + head["b"]

    fwd(params, head, ids, mask).block_until_ready()
    return lambda: fwd(params, head, ids, mask).block_until_ready()


def build_torch(layers: int, hidden: int, heads: int, ff: int, batch: int, seq: int,
                threads: int = 0) -> Any:
    import torch  # noqa: PLC0415
    from transformers import BertConfig, BertForSequenceClassification  # noqa: PLC0415

    torch.set_num_threads(threads or os.cpu_count() or 1)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=ff, num_labels=2)
    model = BertForSequenceClassification(cfg).eval()
    ids = torch.randint(5, VOCAB, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)

    def f() -> None:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask).logits.sum().item()

    f()
    return f


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="bert-1-cpu,bert-6-cpu")
    p.add_argument("--batches", default="1,256")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--reps", type=int, default=0, help="0 = 20 at batch 1, 3 at larger batches")
    p.add_argument("--torch-threads", type=int, default=0, help="0 = all cores")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    from tlm_jax.config import MODEL_PRESETS  # noqa: PLC0415

    info = machine()
    print(f"# {info}", flush=True)
    print(f"CPU: {info['cpu']} ({info['cores']} cores); seq {a.seq}, f32, median latency")
    rows = []
    for preset in a.models.split(","):
        s = MODEL_PRESETS[preset]
        for b in (int(x) for x in a.batches.split(",")):
            fns = {"ours": build_ours(preset, b, a.seq, "float32"),
                   "torch": build_torch(s["layers"], s["hidden"], s["heads"], s["intermediate"],
                                        b, a.seq, a.torch_threads)}
            reps = a.reps or (20 if b == 1 else 3)
            interleaved(fns, 1)
            med = interleaved(fns, reps)
            row = {"model": preset, "batch": b, "ours_ms": med["ours"] * 1e3,
                   "torch_ms": med["torch"] * 1e3, "speedup": med["torch"] / med["ours"]}
            rows.append(row)
            print(f"  {preset} batch {b:4d}: ours {row['ours_ms']:9.2f} ms, torch "
                  f"{row['torch_ms']:9.2f} ms, torch/ours {row['speedup']:.2f}x", flush=True)
    res = {"cpu": info["cpu"], "cores": info["cores"], "date": info["date"], "rows": rows}
    if a.json:
        print(json.dumps(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
