"""Train-step benchmark: our jitted MLM step vs a same-process matmul ceiling and torch.

    python -m benchmarks.train_step --model bert-6-cpu --batch 32 --seq 128 \
        [--dtype bf16|f32] [--grad-accum 4] [--peer torch] [--json]

``--grad-accum N`` runs the batch as N microbatches with one optimizer update (the same
gradient: ``optim.grad_accum``); on a CPU whose DRAM is slow, microbatches of ~1k tokens keep
a layer's activations in the last-level cache. The torch peer then adds a
``bf16_masked_accumN`` variant, so "the fastest torch" is also given the same option.

Model FLOPs per step (multiply-add = 2 FLOPs, backward = 2x forward):

    6 * N_enc * B*L                      encoder matmul params x all tokens
  + 6 * N_head * B*P                     MLM head (transform + tied vocab) at masked positions only
  + 3 * layers * 4 * B * L^2 * H         attention scores + context (fwd 4BL^2H, x3 fwd+bwd)

with N_enc = layers * (4 H^2 + 2 H F) and N_head = H^2 + V H, P = ceil(mask_rate * L).
With ``model.mlm_last_layer=masked`` (the default) the last layer's output projection, MLP
and attention rows run at the P masked positions only, and are counted so (its QKV
projection still covers all B*L tokens); the torch peer computes that layer everywhere.
Embedding lookups, LayerNorm, softmax, GELU, dropout and the optimizer are not counted
(they are "useless" FLOPs for the MFU-style ratio). XLA's own cost analysis of the
compiled step is printed next to it as a cross-check.

The ceiling is measured in the same process: one jitted function doing exactly the
step's matmuls (same shapes, same count, same precision: f32, or bf16 inputs with
f32 accumulation), forward alone and forward + backward (dx and dW matmuls).
All contenders are timed round-robin so noise from other processes hits them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("TLM_CACHE_DIR", "/tmp/tlmcache_bench")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import accelerator, interleaved, machine  # noqa: E402
from tlm_jax.config import load_config
from tlm_jax.data.pipeline import make_dataset
from tlm_jax.train.loop import _mesh_context, compile_steps
from tlm_jax.train.run import build_run, data_seed
from tlm_jax.train.state import create_state

VOCAB = 16384


# --------------------------------------------------------------------------- ours
def build_ours(model: str, batch: int, seq: int, dtype: str, dropout: float = 0.1,
               overrides: tuple[str, ...] = (), vocab: int = VOCAB) -> dict[str, Any]:
    cfg = load_config(None, [
        f"model.preset={model}", f"model.vocab_size={vocab}", f"model.max_len={max(seq, 128)}",
        f"model.dtype={'bfloat16' if dtype == 'bf16' else 'float32'}",
        f"model.dropout={dropout}", f"model.attention_dropout={dropout}",
        "data.source=synthetic", "data.synthetic_docs=3000", "data.packing=pack",
        f"data.max_len={seq}", f"train.batch_size={batch}", "train.progress=false",
        "train.steps=100000", "optim.warmup_steps=10", *overrides])
    run = build_run(cfg, log=lambda _: None, devices=jax.devices()[:1])
    ctx = _mesh_context(run.mesh, False)
    ctx.__enter__()
    state, shardings = create_state(run.model, run.tx, run.mesh, cfg.train.seed, seq)
    fns = compile_steps(run, shardings)
    ds = make_dataset(run.train_source, batch, seed=data_seed(cfg))
    batches = [fns.prep(ds[i]) for i in range(4)]
    t0 = time.perf_counter()
    compiled = fns.train.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    holder = {"state": state, "i": 0}

    def step() -> float:
        s, m = compiled(holder["state"], batches[holder["i"] % len(batches)])
        holder["state"] = s
        holder["i"] += 1
        return m["loss"].block_until_ready()

    pad = run.corpus.special.pad
    ntok = float(np.mean([(np.asarray(b["input_ids"]) != pad).sum() for b in batches]))
    return {"step": step, "compile_s": compile_s, "xla_flops": float(cost.get("flops", 0.0)),
            "cfg": cfg, "run": run, "tokens": ntok, "pred": run.objectives[0][0].max_predictions,
            "ctx": ctx, "holder": holder, "batches": batches, "compiled": compiled}


def model_flops(layers: int, hidden: int, ff: int, vocab: int, batch: int, seq: int,
                pred: int, masked_last: bool = False) -> dict[str, float]:
    """The step's matmul FLOPs (module doc). ``masked_last``: the last layer's output
    projection, MLP and attention rows at the ``pred`` masked positions only
    (``model.mlm_last_layer=masked``); its QKV projection still covers every token."""
    t = batch * seq
    n_qkv, n_rest = 3 * hidden * hidden, hidden * hidden + 2 * hidden * ff
    n_head = hidden * hidden + vocab * hidden
    full = layers - 1 if masked_last else layers
    last = batch * pred if masked_last else 0
    enc = 6.0 * (layers * n_qkv * t + n_rest * (full * t + last))
    head = 6.0 * n_head * batch * pred
    attn = 3.0 * 4 * batch * seq * hidden * (full * seq + (pred if masked_last else 0))
    return {"encoder": enc, "head": head, "attention": attn, "total": enc + head + attn}


# --------------------------------------------------------------------------- ceiling
def matmul_shapes(layers: int, hidden: int, heads: int, ff: int, vocab: int, batch: int,
                  seq: int, pred: int, masked_last: bool = False
                  ) -> list[tuple[int, int, int, int, int]]:
    """(count, M, K, N, rows) per matmul kind of the step's forward.

    ``rows`` = 0: the count is one batched dot of small matmuls (attention: layers x batch x
    heads). Otherwise ``count`` separate matmuls (one per layer) whose [M, K] input is an
    activation ``[rows, M / rows, K]`` (batch x length), as in the model. ``masked_last``:
    the last layer after its QKV projection runs at the ``pred`` masked positions only.
    """
    t, d = batch * seq, hidden // heads
    full = layers - 1 if masked_last else layers
    shapes = [(layers, t, hidden, 3 * hidden, batch)]
    if full:
        shapes += [(full, t, hidden, hidden, batch), (full, t, hidden, ff, batch),
                   (full, t, ff, hidden, batch), (full * batch * heads, seq, d, seq, 0),
                   (full * batch * heads, seq, seq, d, 0)]
    if masked_last:
        p = batch * pred
        shapes += [(1, p, hidden, hidden, batch), (1, p, hidden, ff, batch),
                   (1, p, ff, hidden, batch), (batch * heads, pred, d, seq, 0),
                   (batch * heads, pred, seq, d, 0)]
    return shapes + [(1, batch * pred, hidden, hidden, batch),
                     (1, batch * pred, hidden, vocab, batch)]


def ceiling_args(shapes: list[tuple[int, int, int, int, int]], dtype: str
                 ) -> list[tuple[Any, Any, Any]]:
    """Random (x, w, dy) per matmul kind, already in the compute dtype (so the ceiling times
    matmuls, not casts); shared by the forward and forward+backward ceilings."""
    cdt = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    key = jax.random.key(0)
    args = []
    for i, (c, m, k, n, rows) in enumerate(shapes):
        ka, kb = jax.random.split(jax.random.fold_in(key, i))
        lead = (c, rows, m // rows) if rows else (c, m)
        wshape = (c, k, n)
        args.append((jax.random.normal(ka, (*lead, k), cdt), jax.random.normal(kb, wshape, cdt),
                     jax.random.normal(kb, (*lead, n), cdt)))
    return args


def build_ceiling(shapes: list[tuple[int, int, int, int, int]], dtype: str, backward: bool,
                  args: list[tuple[Any, Any, Any]] | None = None) -> tuple[Any, float]:
    """The step's matmuls alone, in the step's own forms: per layer one [rows, L, K] x [K, N]
    dot, dx = dy W^T and dW = sum over rows and L of x dy; attention as batched dots.

    (XLA:CPU runs a 2-D dW = x^T dy, or one dot batched over the layers, as an f32 matmul or
    a slower form: such a ceiling is one the step itself exceeds.)
    """
    args = ceiling_args(shapes, dtype) if args is None else args
    flops = sum((6.0 if backward else 2.0) * c * m * k * n for c, m, k, n, _ in shapes)

    def mm(a, b, spec):
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)

    # (forward, dx, dW) einsum specs: per-layer dots on [rows, L, K] activations, and batched
    # attention dots.
    layer_specs = ("rlk,kn->rln", "rln,kn->rlk", "rlk,rln->kn")
    batched_specs = ("cmk,ckn->cmn", "cmn,ckn->cmk", "cmk,cmn->ckn")

    def f(args):
        outs = []
        for (*_, rows), (x, w, dy) in zip(shapes, args, strict=True):
            fwd, dx, dw = layer_specs if rows else batched_specs
            pairs = [(x[i], w[i], dy[i]) for i in range(x.shape[0])] if rows else [(x, w, dy)]
            for xi, wi, dyi in pairs:
                outs.append(mm(xi, wi, fwd))
                if backward:
                    outs.append(mm(dyi, wi, dx))
                    outs.append(mm(xi, dyi, dw))
        return outs

    g = jax.jit(f).lower(args).compile()
    return (lambda: jax.block_until_ready(g(args))), flops


# --------------------------------------------------------------------------- torch peer
def build_torch(layers: int, hidden: int, heads: int, ff: int, batch: int, seq: int,
                pred: int, variant: str, threads: int, vocab: int = VOCAB,
                device: str = "cpu", accum: int = 1) -> Any:
    """One HF ``BertForMaskedLM`` AdamW step of ``variant`` on ``device`` ("cpu" or "cuda").

    ``accum`` > 1: the batch runs as that many microbatches whose gradients are summed
    before the one optimizer update (each microbatch has the same number of predictions,
    so ``mean / accum`` per microbatch gives exactly the full-batch loss).
    """
    import torch  # noqa: PLC0415 - optional torch peer
    from transformers import BertConfig, BertForMaskedLM  # noqa: PLC0415 - optional torch peer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=ff, max_position_embeddings=512,
                     hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = BertForMaskedLM(cfg).train().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    att = torch.ones(batch, seq, dtype=torch.long)
    # fixed count of masked positions per sequence (same P as ours)
    pos = torch.stack([torch.randperm(seq - 2, generator=g)[:pred] + 1 for _ in range(batch)])
    labels_sparse = torch.gather(ids, 1, pos)
    masked = ids.clone()
    masked.scatter_(1, pos, 4)
    labels_dense = torch.full_like(ids, -100)
    labels_dense.scatter_(1, pos, labels_sparse)
    masked, att, pos, labels_sparse, labels_dense = (
        t.to(device) for t in (masked, att, pos, labels_sparse, labels_dense))
    autocast = variant != "f32_dense"
    sparse = variant.startswith("bf16_masked")
    ce = torch.nn.CrossEntropyLoss()

    def loss_fn(masked, att, pos, labels_sparse, labels_dense):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            if sparse:
                h = model.bert(input_ids=masked, attention_mask=att).last_hidden_state
                hp = torch.gather(h, 1, pos[..., None].expand(-1, -1, h.shape[-1]))
                logits = model.cls(hp)
                return ce(logits.float().reshape(-1, vocab), labels_sparse.reshape(-1))
            logits = model(input_ids=masked, attention_mask=att).logits
            return ce(logits.float().reshape(-1, vocab), labels_dense.reshape(-1))

    fn = loss_fn
    if variant == "bf16_masked_compiled":
        fn = torch.compile(loss_fn)

    tensors = (masked, att, pos, labels_sparse, labels_dense)
    if batch % accum:
        raise ValueError(f"batch {batch} is not divisible by accum {accum}")
    micro = list(zip(*(t.chunk(accum) for t in tensors), strict=True))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        for mb in micro:
            (fn(*mb) / accum).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


TORCH_VARIANTS = ("f32_dense", "bf16_dense", "bf16_masked", "bf16_masked_compiled")


# --------------------------------------------------------------------------- main
def step_arg_parser(doc: str, steps: int) -> argparse.ArgumentParser:
    """The options every train-step benchmark shares: shape, precision, dropout, overrides."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="bert-6-cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtype", choices=("bf16", "f32"), default="f32")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--vocab", type=int, default=VOCAB, help="vocabulary size (BERT's: 30522)")
    p.add_argument("--steps", type=int, default=steps, help="timed steps (after warm-up)")
    p.add_argument("--set", action="append", default=[], help="extra config override k=v")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = step_arg_parser(__doc__ or "", steps=20)
    p.add_argument("--peer", choices=("torch",), default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="accelerator peak (dense, step precision) for MFU; default: a table")
    p.add_argument("--peer-variants", default=",".join(TORCH_VARIANTS))
    p.add_argument("--grad-accum", type=int, default=1,
                   help="microbatches per step (optim.grad_accum); the torch peer then also "
                        "runs bf16_masked with the same microbatches")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:K=V[,K=V]",
                   help="also time our step with these overrides (same shape, round-robin), "
                        "e.g. fused:model.attention_impl=fused")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    info = machine()
    acc = accelerator()
    info.update(acc)
    print(f"# {info}", flush=True)
    # The torch peer runs where ours runs: CUDA when JAX is on a GPU, else the CPU.
    torch_device = "cuda" if acc["platform"] == "gpu" else "cpu"
    accum = a.grad_accum
    if accum < 1 or a.batch % accum:
        p.error(f"--grad-accum {accum} must divide --batch {a.batch}")
    ours = build_ours(a.model, a.batch, a.seq, a.dtype, a.dropout,
                      (*a.set, f"optim.grad_accum={accum}"), a.vocab)
    mc = ours["cfg"].model
    pred = ours["pred"]
    masked_last = mc.arch == "bert" and mc.mlm_last_layer == "masked"
    fl = model_flops(mc.layers, mc.hidden, mc.intermediate, a.vocab, a.batch, a.seq, pred,
                     masked_last)
    # The ceiling issues the step's own matmuls: microbatch shapes, `accum` times as many.
    shapes = [(c * accum, *rest) for c, *rest in matmul_shapes(
        mc.layers, mc.hidden, mc.heads, mc.intermediate, a.vocab, a.batch // accum, a.seq, pred,
        masked_last)]
    fns: dict[str, Any] = {"ours": ours["step"]}
    for spec in a.variant:
        name, _, sets = spec.partition(":")
        if not name or not sets:
            p.error(f"--variant {spec!r}: expected NAME:key=value[,key=value]")
        try:
            fns[f"variant_{name}"] = build_ours(
                a.model, a.batch, a.seq, a.dtype, a.dropout,
                (*a.set, f"optim.grad_accum={accum}", *sets.split(",")), a.vocab)["step"]
        except Exception as e:  # noqa: BLE001 - report a variant that does not build, go on
            print(f"# variant {name} failed: {type(e).__name__}: {str(e)[:1500]}", flush=True)
    ceil_flops = {}
    for prec in ("f32", "bf16"):
        shared = ceiling_args(shapes, prec)
        for bw in (False, True):
            name = f"ceiling_{prec}_{'fwdbwd' if bw else 'fwd'}"
            fns[name], ceil_flops[name] = build_ceiling(shapes, prec, bw, shared)
    peer_err: dict[str, str] = {}
    if a.peer == "torch":
        variants = a.peer_variants.split(",")
        if accum > 1:
            variants.append(f"bf16_masked_accum{accum}")
        for v in variants:
            try:
                v_accum = int(v.rsplit("accum", 1)[1]) if "_accum" in v else 1
                f = build_torch(mc.layers, mc.hidden, mc.heads, mc.intermediate, a.batch, a.seq,
                                pred, v, os.cpu_count() or 1, a.vocab, torch_device, v_accum)
                t0 = time.perf_counter()
                f()
                f()
                print(f"# torch {v}: first two steps {time.perf_counter() - t0:.1f}s", flush=True)
                fns[f"torch_{v}"] = f
            except Exception as e:  # noqa: BLE001 - report why a peer variant is missing
                peer_err[v] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                print(f"# torch {v} failed: {peer_err[v]}", flush=True)
    for _ in range(a.warmup):
        for f in fns.values():
            f()
    med = interleaved(fns, a.steps)
    t_ours = med["ours"]
    tok = a.batch * a.seq
    res: dict[str, Any] = {
        "cpu": info["cpu"], "cores": info["cores"], "jax": info["jax"], "date": info["date"],
        "model": a.model, "batch": a.batch, "seq": a.seq, "dtype": a.dtype,
        "dropout": a.dropout, "grad_accum": accum, "step_s": t_ours, "tokens_per_s": tok / t_ours,
        "nonpad_tokens_per_step": ours["tokens"], "compile_s": ours["compile_s"],
        "model_flops_per_step": fl["total"], "flops_breakdown": fl,
        # XLA counts a while loop's body once: the microbatch loop runs it `accum` times.
        "xla_cost_analysis_flops": ours["xla_flops"] * accum,
        "achieved_flops_per_s": fl["total"] / t_ours,
    }
    for name in ceil_flops:
        res[f"{name}_flops_per_s"] = ceil_flops[name] / med[name]
    step_ceiling = res[f"ceiling_{a.dtype}_fwdbwd_flops_per_s"]
    best_ceiling = max(res["ceiling_f32_fwdbwd_flops_per_s"], res["ceiling_bf16_fwdbwd_flops_per_s"])
    res["ceiling_ratio"] = res["achieved_flops_per_s"] / step_ceiling
    res["ceiling_ratio_vs_best_precision"] = res["achieved_flops_per_s"] / best_ceiling
    peak = a.peak_tflops or (acc["bf16_peak_tflops"] if a.dtype == "bf16" else None)
    res.update(platform=acc["platform"], device_kind=acc["device_kind"])
    if peak:
        # MFU: useful model FLOP/s over the chip's dense peak in the step's precision.
        res["peak_flops_per_s"] = peak * 1e12
        res["mfu"] = res["achieved_flops_per_s"] / res["peak_flops_per_s"]
    extra = {k[len("variant_"):]: v for k, v in med.items() if k.startswith("variant_")}
    if extra:
        res["variants"] = {k: {"step_s": v, "tokens_per_s": tok / v, "vs_ours": t_ours / v}
                           for k, v in extra.items()}
    if a.peer == "torch":
        res["peer_device"] = torch_device
        peers = {k[len("torch_"):]: tok / v for k, v in med.items() if k.startswith("torch_")}
        res["peer_tokens_per_s"] = peers
        res["peer_errors"] = peer_err
        if peers:
            best = max(peers, key=peers.get)
            res["fastest_peer"] = best
            res["ratio_vs_fastest_peer"] = res["tokens_per_s"] / peers[best]
            for v in res.get("variants", {}).values():
                v["ratio_vs_fastest_peer"] = v["tokens_per_s"] / peers[best]
    print(f"CPU: {info['cpu']} ({info['cores']} cores), jax {info['jax']}, device "
          f"{acc['platform']} {acc['device_kind']}")
    print(f"{a.model} batch {a.batch} seq {a.seq} dtype {a.dtype} dropout {a.dropout}"
          f"{f' grad_accum {accum}' if accum > 1 else ''}; {a.steps} interleaved steps (median)")
    print(f"  ours: {t_ours * 1e3:.1f} ms/step, {res['tokens_per_s']:,.0f} tokens/s, "
          f"compile {ours['compile_s']:.1f}s")
    for k, v in res.get("variants", {}).items():
        print(f"  ours with {k}: {v['step_s'] * 1e3:.1f} ms/step, {v['tokens_per_s']:,.0f} "
              f"tokens/s ({v['vs_ours']:.2f}x ours)")
    print(f"  model FLOPs/step {fl['total'] / 1e9:.2f} G (encoder {fl['encoder'] / 1e9:.2f}, "
          f"head {fl['head'] / 1e9:.2f}, attention {fl['attention'] / 1e9:.2f}); "
          f"XLA cost analysis {res['xla_cost_analysis_flops'] / 1e9:.2f} G"
          f"{' (loop body x grad_accum)' if accum > 1 else ''}")
    print(f"  achieved {res['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s")
    for name in ceil_flops:
        print(f"  {name}: {med[name] * 1e3:.1f} ms, {res[name + '_flops_per_s'] / 1e9:.1f} GFLOP/s")
    print(f"  ceiling ratio (step precision {a.dtype}, fwd+bwd): {res['ceiling_ratio']:.2f}; "
          f"vs best precision: {res['ceiling_ratio_vs_best_precision']:.2f}")
    if "mfu" in res:
        print(f"  MFU {res['mfu']:.3f} (model FLOP/s over the {peak:.0f} TFLOP/s dense peak); "
              f"bf16 matmul ceiling fwd+bwd = "
              f"{res['ceiling_bf16_fwdbwd_flops_per_s'] / res['peak_flops_per_s']:.3f} of peak")
    if a.peer == "torch":
        for k, v in res["peer_tokens_per_s"].items():
            print(f"  torch ({torch_device}) {k}: {tok / v * 1e3:.1f} ms/step, {v:,.0f} tokens/s "
                  f"(ours/this = {res['tokens_per_s'] / v:.2f}x)")
        for k, v in peer_err.items():
            print(f"  torch {k}: FAILED ({v})")
        if "ratio_vs_fastest_peer" in res:
            print(f"  ours / fastest torch ({res['fastest_peer']}): "
                  f"{res['ratio_vs_fastest_peer']:.2f}x")
    if a.json:
        print(json.dumps(res, default=float))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
