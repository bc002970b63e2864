"""The benchmark scripts run and report what they promise (no timing is asserted here)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

TINY = ["--model", "tiny", "--batch", "4", "--seq", "32", "--vocab", "4096", "--steps", "1"]


def test_train_step_reports_ratios_mfu_and_the_torch_peer() -> None:
    pytest.importorskip("transformers")
    from benchmarks import train_step

    res = train_step.main([*TINY, "--warmup", "0", "--dtype", "bf16", "--peak-tflops", "1",
                           "--peer", "torch", "--peer-variants", "f32_dense", "--json"])
    for key in ("cpu", "tokens_per_s", "ceiling_ratio", "model_flops_per_step",
                "xla_cost_analysis_flops", "peer_tokens_per_s", "ratio_vs_fastest_peer", "mfu"):
        assert key in res, key
    assert res["peer_errors"] == {} and set(res["peer_tokens_per_s"]) == {"f32_dense"}
    # The formula counts matmuls only; XLA's count adds the elementwise work on top.
    assert 0.8 < res["xla_cost_analysis_flops"] / res["model_flops_per_step"] < 1.5
    assert res["mfu"] == pytest.approx(res["achieved_flops_per_s"] / 1e12)


def test_train_step_microbatches_both_contenders() -> None:
    pytest.importorskip("transformers")
    from benchmarks import train_step

    res = train_step.main([*TINY, "--warmup", "0", "--grad-accum", "2", "--peer", "torch",
                           "--peer-variants", "bf16_masked"])
    assert res["grad_accum"] == 2
    assert set(res["peer_tokens_per_s"]) == {"bf16_masked", "bf16_masked_accum2"}
    # XLA counts the microbatch loop's body once; the report scales it back to the step.
    assert 0.8 < res["xla_cost_analysis_flops"] / res["model_flops_per_step"] < 1.5
    with pytest.raises(SystemExit):
        train_step.main([*TINY, "--grad-accum", "3"])


def test_step_breakdown_attributes_the_step() -> None:
    from benchmarks import step_breakdown

    res = step_breakdown.main(TINY)
    for stage in ("mask", "forward", "forward+backward", "step"):
        assert res[f"{stage}_ms"] > 0
    assert res["backward_ms"] == pytest.approx(res["forward+backward_ms"] - res["forward_ms"])


def test_op_profile_attributes_time_to_xla_ops() -> None:
    # A fresh process: the per-op trace events need an XLA flag set before JAX starts. It
    # compiles as users do (no test compile flags): the profile is of the optimised program.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.op_profile", "--model", "tiny",
                          "--batch", "4", "--seq", "32", "--steps", "1", "--top", "5"],
                         capture_output=True, text=True, env=env, timeout=600, check=True).stdout
    by_kind = out.split("by kind (ms/step):")[1].split("largest operations")[0]
    rows = [line.split() for line in by_kind.strip().splitlines()]
    assert rows and all(float(r[0]) >= 0 for r in rows)
    assert any("fusion" in r[1] for r in rows), out
    largest = out.split("largest operations")[1].strip().splitlines()[1:]
    assert len(largest) == 5 and any("dot_general" in line for line in largest), out


def test_train_step_times_variants_of_ours_and_reports_a_broken_one() -> None:
    from benchmarks import train_step

    res = train_step.main([*TINY, "--warmup", "0", "--variant", "nodrop:model.dropout=0",
                           "--variant", "bad:model.attention_impl=nope"])
    assert set(res["variants"]) == {"nodrop"}  # the bad one is reported and skipped
    v = res["variants"]["nodrop"]
    assert v["vs_ours"] == pytest.approx(res["step_s"] / v["step_s"])
    with pytest.raises(SystemExit):
        train_step.main([*TINY, "--variant", "no-overrides"])


def test_attention_benchmark_compares_every_variant_with_ours() -> None:
    from benchmarks import attention

    res = attention.main(["--batch", "2", "--seq", "32", "--heads", "2", "--head-dim", "16",
                          "--layers", "2", "--reps", "1", "--interpret",
                          "--fused-blocks", "16,16,4,4"])
    assert {"ours", "ours_dropout", "jax_xla", "fused", "fused_dropout",
            "fused[16,16,4,4]_dropout"} <= set(res)
    # Same math, same dropout masks: every variant agrees with our XLA attention.
    for name in ("jax_xla", "fused", "fused_dropout", "fused[16,16,4,4]_dropout"):
        assert res[name]["max_out_diff"] < 0.05 and res[name]["max_grad_diff"] < 0.05, name
    assert all(r["ms"] > 0 for r in res.values())


def test_inference_compares_ours_with_whole_and_chunked_torch() -> None:
    pytest.importorskip("transformers")
    from benchmarks import inference

    res = inference.main(["--models", "bert-1-cpu", "--batches", "1,16", "--reps", "1",
                          "--full", "--json"])
    one, sixteen = res["rows"]
    assert (one["model"], one["batch"], sixteen["batch"]) == ("bert-1-cpu", 1, 16)
    assert "torch_chunks_ms" not in one  # nothing to chunk at batch 1
    assert sixteen["torch_chunks_ms"] > 0  # 8-row chunks at length 128 on a CPU
    for row in res["rows"]:
        assert row["ours_ms"] > 0 and row["ours_full_ms"] > 0
        assert row["speedup"] == pytest.approx(row["fastest_torch_ms"] / row["ours_ms"])


@pytest.mark.parametrize("masked_last", [False, True])
def test_flop_formula_equals_the_ceilings_matmuls(masked_last: bool) -> None:
    from benchmarks.train_step import matmul_shapes, model_flops

    fl = model_flops(6, 256, 1024, 16384, 32, 128, 20, masked_last)
    shapes = matmul_shapes(6, 256, 4, 1024, 16384, 32, 128, 20, masked_last)
    assert sum(6.0 * c * m * k * n for c, m, k, n, _ in shapes) == pytest.approx(fl["total"])
    # The masked last layer: 0.9 of the whole step's matmuls at this shape.
    if masked_last:
        full = model_flops(6, 256, 1024, 16384, 32, 128, 20)["total"]
        assert 0.89 < fl["total"] / full < 0.91


def test_every_dot_of_the_bf16_step_stays_bf16() -> None:
    """The compiled bf16 train step has no matmul upcast to f32 (XLA:CPU's bf16 path needs
    the left operand to contract its last dimension); the census itself catches an upcast."""
    from benchmarks import dot_forms

    res = dot_forms.main(["--model", "tiny", "--batch", "4", "--seq", "32", "--vocab", "4096",
                          "--dtype", "bf16", "--grad-accum", "2", "--json"])
    assert res["dots"] > 0 and res["f32_dots"] == 0
    assert res["bf16_dots"] == res["dots"]
    assert dot_forms.reference_upcast()["f32_dots"] == 1
