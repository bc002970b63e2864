"""Fine-tuned-classifier-shaped inference latency: encoder forward + a small head.

    python -m benchmarks.inference [--models bert-1-cpu,bert-6-cpu] [--batches 1,256] [--json]

Ours: the package's ``SequenceClassifier`` (deterministic, f32, [CLS] pooling, 2 classes),
jitted; it runs the last layer on [CLS] only (``BertModel.encode(queries=1)``) and, on a CPU,
a large batch in cache-sized row chunks (``tlm_jax/models/batching.py``). ``--full`` also
times the whole encoder's output in one piece (the computation before both).
Torch: ``BertForSequenceClassification`` (same shape, vocab 16384, f32, eval,
``torch.inference_mode``), whole batch, and on a CPU also in our chunk size; the ratio is to
the faster of the two. Same process, timed round-robin; median latency per call.
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
from tlm_jax.config import MODEL_PRESETS, load_config
from tlm_jax.models.batching import default_chunk_rows, map_in_chunks
from tlm_jax.models.classifier import SequenceClassifier
from tlm_jax.sharding import unbox

VOCAB = 16384


def build_ours(preset: str, batch: int, seq: int, dtype: str, fast: bool = True) -> Any:
    """The package's fine-tuned classifier (``SequenceClassifier``, [CLS] pooling), jitted.

    As fine-tuning's evaluation and the committee's latency runs it: the last layer on [CLS]
    only, and on a CPU the batch in cache-sized row chunks (``models/batching.py``).
    ``fast=False``: the whole encoder's output in one piece (the computation before both).
    """
    cfg = load_config(None, [f"model.preset={preset}", f"model.vocab_size={VOCAB}",
                             f"model.dtype={dtype}"])
    model = SequenceClassifier(cfg.model, 2)
    ids = jnp.asarray(np.random.default_rng(0).integers(5, VOCAB, (batch, seq)), jnp.int32)
    mask = jnp.ones((batch, seq), jnp.int32)
    variables = unbox(model.init(jax.random.key(0), {"input_ids": ids[:1]}))

    def full(m: Any, inputs: dict) -> jax.Array:
        return m.classifier(m.encoder.encode(inputs)[:, 0]).astype(jnp.float32)

    def logits(variables: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
        inputs = {"input_ids": ids, "attention_mask": mask}
        if fast:
            return model.apply(variables, inputs)["class_logits"]
        return model.apply(variables, inputs, method=full)

    rows = default_chunk_rows(seq) if fast else 0
    fwd = jax.jit(lambda v, ids, mask: map_in_chunks(lambda i, m: logits(v, i, m), rows)(ids, mask))
    fwd(variables, ids, mask).block_until_ready()
    return lambda: fwd(variables, ids, mask).block_until_ready()


def build_torch(layers: int, hidden: int, heads: int, ff: int, batch: int, seq: int,
                threads: int = 0, rows: int = 0) -> Any:
    """HF ``BertForSequenceClassification``; ``rows > 0`` runs the batch in chunks of that many."""
    import torch  # noqa: PLC0415 - optional torch peer
    from transformers import BertConfig, BertForSequenceClassification  # noqa: PLC0415 - optional torch peer

    torch.set_num_threads(threads or os.cpu_count() or 1)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=ff, num_labels=2)
    model = BertForSequenceClassification(cfg).eval()
    ids = torch.randint(5, VOCAB, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    step = rows or batch

    def f() -> None:
        with torch.inference_mode():
            out = [model(input_ids=ids[i:i + step], attention_mask=mask[i:i + step]).logits
                   for i in range(0, batch, step)]
            torch.cat(out).sum().item()

    f()
    return f


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="bert-1-cpu,bert-6-cpu")
    p.add_argument("--batches", default="1,256")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--reps", type=int, default=0, help="0 = 20 at batch 1, 3 at larger batches")
    p.add_argument("--torch-threads", type=int, default=0, help="0 = all cores")
    p.add_argument("--full", action="store_true",
                   help="also time ours with the whole last layer (no [CLS]-only prefix)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    info = machine()
    print(f"# {info}", flush=True)
    print(f"CPU: {info['cpu']} ({info['cores']} cores); seq {a.seq}, f32, median latency")
    rows = []
    chunk = default_chunk_rows(a.seq)
    for preset in a.models.split(","):
        s = MODEL_PRESETS[preset]
        shape = (s["layers"], s["hidden"], s["heads"], s["intermediate"])
        for b in (int(x) for x in a.batches.split(",")):
            fns = {"ours": build_ours(preset, b, a.seq, "float32"),
                   "torch": build_torch(*shape, b, a.seq, a.torch_threads)}
            if chunk and b > chunk:  # torch gets the same cache-sized chunks, if they help it
                fns["torch_chunks"] = build_torch(*shape, b, a.seq, a.torch_threads, chunk)
            if a.full:
                fns["ours_full"] = build_ours(preset, b, a.seq, "float32", fast=False)
            reps = a.reps or (20 if b == 1 else 3)
            interleaved(fns, 1)
            med = interleaved(fns, reps)
            best = min((k for k in med if k.startswith("torch")), key=med.get)
            row = {"model": preset, "batch": b, "ours_ms": med["ours"] * 1e3,
                   "torch_ms": med["torch"] * 1e3, "fastest_torch": best,
                   "fastest_torch_ms": med[best] * 1e3, "speedup": med[best] / med["ours"]}
            extra = ""
            if "torch_chunks" in med:
                row["torch_chunks_ms"] = med["torch_chunks"] * 1e3
                extra += f", torch in {chunk}-row chunks {row['torch_chunks_ms']:.2f} ms"
            if a.full:
                row["ours_full_ms"] = med["ours_full"] * 1e3
                extra += f", ours as before (whole last layer, one piece) {row['ours_full_ms']:.2f} ms"
            rows.append(row)
            print(f"  {preset} batch {b:4d}: ours {row['ours_ms']:9.2f} ms, torch "
                  f"{row['torch_ms']:9.2f} ms{extra}; fastest torch / ours "
                  f"{row['speedup']:.2f}x", flush=True)
    res = {"cpu": info["cpu"], "cores": info["cores"], "date": info["date"], "rows": rows}
    if a.json:
        print(json.dumps(res))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
