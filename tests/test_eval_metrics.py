"""Tests of the metrics, confidence intervals and the TF-IDF baseline."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from tlm_jax.eval.baselines import tfidf_logreg_baseline
from tlm_jax.eval.metrics import (
    _T975,
    _t975_fallback,
    classification_report,
    confusion_matrix,
    mean_ci95,
    softmax,
    softmax_average,
    t_quantile_975,
)
from tlm_jax.tasks import load_ag_news

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("TLM_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data")))


def test_report_matches_hand_computation() -> None:
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    report = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    # F1 = 2TP / (2TP + FP + FN): a 4/5, b 2/4, c 2/3.
    assert report["per_class_f1"] == pytest.approx({"a": 0.8, "b": 0.5, "c": 2 / 3})
    assert report["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert report["per_class_accuracy"] == pytest.approx({"a": 2 / 3, "b": 0.5, "c": 1.0})
    assert report["support"] == {"a": 3, "b": 2, "c": 1}
    assert report["n"] == 6
    json.dumps(report)


def test_report_absent_class_and_sklearn_agreement() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    # Class "d" is neither in y_true nor predicted: it does not drag macro-F1 down,
    # and its accuracy is undefined (None). Class "c" is predicted but absent: F1 0.
    y_true = [0, 1, 1, 0, 1, 0, 0]
    y_pred = [0, 1, 2, 0, 0, 0, 1]
    report = classification_report(y_true, y_pred, ["a", "b", "c", "d"])
    assert report["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert report["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert report["per_class_accuracy"]["d"] is None
    assert report["per_class_f1"]["c"] == 0.0
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    r = classification_report(t, p, list("abcde"))
    assert r["macro_f1"] == pytest.approx(f1_score(t, p, average="macro"))


def test_confusion_matrix_validates() -> None:
    assert confusion_matrix([1, 1], [1, 0], 2).tolist() == [[0, 0], [1, 1]]
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 0], 3)
    with pytest.raises(ValueError, match="2 labels"):
        confusion_matrix([0, 1], [0], 2)


def test_mean_ci95_known_values() -> None:
    result = mean_ci95([1, 2, 3, 4, 5])
    # s = sqrt(2.5); t_{0.975, 4} = 2.7764451...
    assert result["mean"] == 3.0 and result["n"] == 5
    assert result["std"] == pytest.approx(math.sqrt(2.5))
    assert result["ci95"] == pytest.approx(2.7764451051977934 * math.sqrt(2.5) / math.sqrt(5))
    assert result["ci95"] == pytest.approx(1.96324, abs=1e-5)
    assert result["values"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert mean_ci95([0.7])["ci95"] == 0.0 and mean_ci95([0.7])["mean"] == 0.7
    # Two seeds: t_{0.975, 1} = 12.706, so the interval is wide, as it should be.
    assert mean_ci95([0.8, 0.9])["ci95"] == pytest.approx(12.7062047 * 0.05, rel=1e-6)
    with pytest.raises(ValueError):
        mean_ci95([])
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci95([1.0, float("nan")])


def test_t_quantile_table_and_fallback() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 200):
        exact = stats.t.ppf(0.975, df)
        assert t_quantile_975(df) == pytest.approx(exact, rel=1e-12)
        assert _t975_fallback(df) == pytest.approx(exact, abs=1e-5)
    assert len(_T975) == 30 and _T975[29] == pytest.approx(2.0422724563, rel=1e-9)


def test_softmax_average() -> None:
    p1 = np.array([[0.9, 0.1], [0.2, 0.8]])
    p2 = np.array([[0.5, 0.5], [0.6, 0.4]])
    np.testing.assert_allclose(softmax_average([p1, p2]), [[0.7, 0.3], [0.4, 0.6]])
    logits = [np.array([[0.0, math.log(3.0)]]), np.array([[math.log(3.0), 0.0]])]
    np.testing.assert_allclose(softmax_average(logits, from_logits=True), [[0.5, 0.5]])
    np.testing.assert_allclose(softmax(np.array([1000.0, 1000.0])), [0.5, 0.5])
    with pytest.raises(ValueError, match="same shape"):
        softmax_average([p1, p1[:1]])
    with pytest.raises(ValueError):
        softmax_average([])


@pytest.mark.skipif(not (DATA_DIR / "ag_news").is_dir(), reason="shared data not found")
def test_tfidf_baseline_on_ag_news() -> None:
    data = load_ag_news(DATA_DIR, train_per_class=500, test_per_class=200, seed=0)
    report = tfidf_logreg_baseline(data, seed=0)
    # Measured: 0.8425 accuracy (seed 0, 2,000 train / 800 test rows).
    assert report["accuracy"] > 0.8
    assert report["macro_f1"] > 0.8
    assert report["train_size"] == 2000 and report["test_size"] == 800
    assert sum(report["support"].values()) == 800
    assert report["method"] == "tfidf_logreg" and report["fit_seconds"] > 0
    json.dumps(report)
