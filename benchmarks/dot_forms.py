"""Which matmul kernels the compiled train step uses: every dot's operand dtypes and form.

    python -m benchmarks.dot_forms --model bert-6-cpu --batch 32 --seq 128 --dtype bf16 \
        [--grad-accum 4] [--json]

XLA:CPU keeps a bf16 x bf16 -> f32 dot in bf16 (its YNNPACK fusion) only when the left operand
contracts its last dimension and the operands are row-major (``IsDotSupportedByYnn`` in
``xla/backends/cpu/ynn_support.cc``; ``OperandUpcaster`` and ``FloatNormalization`` in
``cpu_compiler.cc`` convert every other bf16 dot to f32). A bare 2-D weight gradient
``lax.dot_general(x, dy, (((0,), (0,)), ((), ())))`` is upcast; the model's dense layers
contract ``[batch, length, K]`` activations over two dimensions, and XLA's ``DotDecomposer``
then writes the operand transposed into a row-major ``[K, batch * length]`` copy, which keeps
the dot in bf16. This script reads the optimized HLO of the real step and counts the dots by
operand dtypes and contracting dimensions, so a change that pushes a dot off the bf16 path
shows up without timing anything (timings need an idle machine; this does not).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.common import machine
from benchmarks.train_step import build_ours

_COMPUTATION = re.compile(r"\n(?=\S.*\{\n)")
_DOT = re.compile(r"= (\w+)\[([\d,]*)\]\S* dot\(([^)]*)\), (?:lhs_batch_dims=\{[\d,]*\}, "
                  r"rhs_batch_dims=\{[\d,]*\}, )?lhs_contracting_dims=\{([\d,]*)\}, "
                  r"rhs_contracting_dims=\{([\d,]*)\}")
_VALUE = re.compile(r"%?([\w.\-]+) = (\w+)\[[\d,]*\]")


def dot_forms(hlo_text: str) -> list[dict[str, Any]]:
    """One record per dot in an optimized HLO module: operand dtypes, output, contractions."""
    out = []
    for comp in _COMPUTATION.split(hlo_text):
        types = {m.group(1): m.group(2) for m in _VALUE.finditer(comp)}
        for m in _DOT.finditer(comp):
            operands = [o.strip().lstrip("%") for o in m.group(3).split(",")]
            out.append({"lhs": types.get(operands[0], "?"), "rhs": types.get(operands[1], "?"),
                        "out": f"{m.group(1)}[{m.group(2)}]", "lhs_contract": m.group(4),
                        "rhs_contract": m.group(5)})
    return out


def summarize(forms: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of dots by operand dtypes, and how many are low-precision dots in canonical form."""
    by_types = Counter(f"{f['lhs']} x {f['rhs']} -> {f['out'].split('[')[0]}" for f in forms)
    low = [f for f in forms if f["lhs"] == f["rhs"] == "bf16"]
    canonical = [f for f in low if f["lhs_contract"] == "1" and f["out"].count(",") == 1]
    return {"dots": len(forms), "by_operand_types": dict(by_types), "bf16_dots": len(low),
            "bf16_dots_lhs_contracting_last": len(canonical),
            "f32_dots": sum(1 for f in forms if f["lhs"] == f["rhs"] == "f32")}


def reference_upcast(t: int = 1024, k: int = 256, n: int = 1024) -> dict[str, Any]:
    """The census of ``dot_general(x, dy)`` contracting dimension 0 of both (bf16 -> f32): the
    form XLA:CPU upcasts, to show what an off-path dot looks like in :func:`summarize`."""
    x = jax.ShapeDtypeStruct((t, k), jnp.bfloat16)
    dy = jax.ShapeDtypeStruct((t, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())),
                                                 preferred_element_type=jnp.float32))
    return summarize(dot_forms(f.lower(x, dy).compile().as_text()))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Compile the step and print its dot census."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bert-6-cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--dtype", choices=("bf16", "f32"), default="bf16")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    built = build_ours(a.model, a.batch, a.seq, a.dtype, vocab=a.vocab,
                       overrides=(f"optim.grad_accum={a.grad_accum}",))
    built["ctx"].__exit__(None, None, None)
    forms = dot_forms(built["compiled"].as_text())
    res = {**machine(), **vars(a), **summarize(forms)}
    if a.json:
        print(json.dumps({**res, "forms": forms}, indent=2))
    else:
        print(f"# {machine()}")
        for key in ("dots", "by_operand_types", "bf16_dots", "bf16_dots_lhs_contracting_last",
                    "f32_dots"):
            print(f"{key}: {res[key]}")
        for (form, n) in Counter(f"{f['lhs']}x{f['rhs']}->{f['out']} contract "
                                 f"{f['lhs_contract']}/{f['rhs_contract']}"
                                 for f in forms).most_common():
            print(f"  {n:3d}  {form}")
        print(f"reference, a bare 2-D weight gradient x^T dy: {reference_upcast()}")
    return res


if __name__ == "__main__":
    main()
