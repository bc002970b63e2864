"""The benchmark scripts run and report what they promise (no timing is asserted here)."""

from __future__ import annotations

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


def test_step_breakdown_attributes_the_step() -> None:
    from benchmarks import step_breakdown

    res = step_breakdown.main(TINY)
    for stage in ("mask", "forward", "forward+backward", "step"):
        assert res[f"{stage}_ms"] > 0
    assert res["backward_ms"] == pytest.approx(res["forward+backward_ms"] - res["forward_ms"])
