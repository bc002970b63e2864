"""Scores and result files: a split's report, the summary over seeds, paired gaps, JSON output."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlm_jax.eval.metrics import classification_report, mean_ci95


def score_logits(logits: np.ndarray, labels: np.ndarray, names: list[str]) -> dict[str, Any]:
    """The classification report of ``logits`` against ``labels``, plus the mean cross-entropy ``loss``."""
    rep = classification_report(labels, logits.argmax(-1), names)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    rep["loss"] = float(-logp[np.arange(len(labels)), labels].mean())
    return rep


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (numpy values and paths as plain JSON)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def summarize_seeds(per_seed: Sequence[dict[str, Any]],
                    baselines: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Mean ± 95 % CI of accuracy and macro-F1 over seeds, mean per-class accuracy, summed
    confusion matrix, and the same for the baseline."""
    out: dict[str, Any] = {
        "accuracy": mean_ci95([r["accuracy"] for r in per_seed]),
        "macro_f1": mean_ci95([r["macro_f1"] for r in per_seed]),
    }
    names = per_seed[0]["label_names"]
    out["per_class_accuracy"] = {
        n: (float(np.mean(vals)) if (vals := [r["per_class_accuracy"][n] for r in per_seed
                                              if r["per_class_accuracy"].get(n) is not None])
            else None) for n in names}
    out["confusion_matrix"] = np.sum([np.asarray(r["confusion_matrix"]) for r in per_seed],
                                     axis=0).tolist()
    out["confusion_matrix_note"] = "summed over seeds; rows true, columns predicted"
    if baselines:
        out["baseline"] = {
            "method": baselines[0].get("method", "tfidf_logreg"),
            "accuracy": mean_ci95([b["accuracy"] for b in baselines]),
            "macro_f1": mean_ci95([b["macro_f1"] for b in baselines]),
            "params": baselines[0].get("params"),
        }
    return out


def paired_gap(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], key: str = "accuracy"
               ) -> dict[str, Any]:
    """Mean ± 95 % CI of ``a - b`` over seeds present in both (paired by seed)."""
    bs = {r["seed"]: r[key] for r in b}
    diffs = [r[key] - bs[r["seed"]] for r in a if r["seed"] in bs]
    if not diffs:
        raise ValueError("no common seeds")
    return mean_ci95(diffs)
