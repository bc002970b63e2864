"""Soft committees (tlm_jax.eval.committee): averaged-softmax scoring and latency timing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tlm_jax.config import ModelConfig
from tlm_jax.errors import TLMError
from tlm_jax.eval.committee import committee_scores, measure_latency


def _member(root: Path, name: str, logits: np.ndarray, labels: np.ndarray, seed: int = 0) -> Path:
    d = root / name / f"seed_{seed}"
    d.mkdir(parents=True)
    np.save(d / "test_logits.npy", logits)
    np.save(d / "test_labels.npy", labels)
    return d.parent


def test_committee_scores_average_softmax(tmp_path) -> None:
    labels = np.array([0, 1, 1, 0])
    # Member 0 is right on rows 0,1; member 1 is confidently right on rows 2,3 and mildly
    # wrong elsewhere, so the average is right everywhere.
    m0 = np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]]))
    m1 = np.log(np.array([[0.6, 0.4], [0.55, 0.45], [0.01, 0.99], [0.99, 0.01]]))
    dirs = [_member(tmp_path, f"m{i}", lg, labels) for i, lg in enumerate((m0, m1))]
    sc = committee_scores(dirs, [0], ["x", "y"])
    assert sc[1][0]["accuracy"] == pytest.approx(0.5)
    assert sc[2][0]["accuracy"] == pytest.approx(1.0)
    assert sc[2][0]["seed"] == 0 and sc[2][0]["macro_f1"] == pytest.approx(1.0)
    # Averaging softmaxes is not averaging logits: member A spreads its belief over classes
    # 1 and 2, B is sure of class 0. Mean logits [1, 1.5, 1.5] would say 1; the mean
    # probabilities (0.41, 0.29, 0.29) say 0, the label.
    a = np.tile([0.0, 3.0, 3.0], (3, 1))
    b = np.tile([2.0, 0.0, 0.0], (3, 1))
    zeros = np.zeros(3, np.int64)
    d2 = [_member(tmp_path, "a", a, zeros), _member(tmp_path, "b", b, zeros)]
    assert committee_scores(d2, [0], ["x", "y", "z"])[2][0]["accuracy"] == pytest.approx(1.0)
    assert (a + b).argmax(-1).tolist() == [1, 1, 1]


def test_committee_scores_refuses_mismatched_members(tmp_path) -> None:
    lg = np.zeros((3, 2))
    a = _member(tmp_path, "a", lg, np.array([0, 1, 0]))
    b = _member(tmp_path, "b", lg, np.array([1, 1, 0]))
    with pytest.raises(TLMError, match="disagree on the test split of seed 0"):
        committee_scores([a, b], [0], ["x", "y"])
    with pytest.raises(TLMError, match="no test_logits.npy"):
        committee_scores([a], [1], ["x", "y"])


def test_measure_latency_tiny() -> None:
    m = dataclasses.replace(ModelConfig(), hidden=16, heads=2, intermediate=32, layers=1,
                            vocab_size=128, max_len=16)
    lines: list[str] = []
    lat = measure_latency({"committee": (m, 2), "deep": (dataclasses.replace(m, layers=2), 1)},
                          num_classes=3, length=8, batches=[1, 4], repeats=2, log=lines.append)
    assert set(lat) == {"committee", "deep"}
    for res in lat.values():
        assert set(res) == {"1", "4"}
        assert res["4"]["median_ms"] > 0 and res["4"]["examples_per_s"] > 0
        assert res["4"]["p10_ms"] <= res["4"]["median_ms"] <= res["4"]["p90_ms"]
    assert len(lines) == 2 and lines[0].startswith("latency committee:")
