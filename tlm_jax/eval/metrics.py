"""Classification metrics and seed-level confidence intervals, in plain numpy.

Conventions follow scikit-learn where they overlap: the confusion matrix has
true labels on rows and predictions on columns, and macro-F1 averages over the
classes that occur in ``y_true`` or ``y_pred`` (a class that is neither present
nor predicted is not counted as a 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

try:
    from scipy import stats as scipy_stats
except ImportError:  # scipy comes with scikit-learn; the table below covers its absence
    scipy_stats = None

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30, used when
# scipy is not installed.
_T975 = (
    12.706204736174707, 4.302652729749464, 3.182446305284263, 2.7764451051977934,
    2.570581835636314, 2.4469118511449692, 2.3646242515927844, 2.306004135204166,
    2.2621571628540993, 2.2281388519649385, 2.2009851600916384, 2.1788128296672284,
    2.1603686564610127, 2.1447866879169273, 2.131449545559323, 2.1199052992210112,
    2.1098155778331806, 2.10092204024096, 2.093024054408263, 2.0859634472658364,
    2.079613844727662, 2.0738730679040147, 2.068657610419041, 2.0638985616280205,
    2.059538552753294, 2.055529438642871, 2.0518305164802833, 2.048407141795244,
    2.045229642132703, 2.0422724563012373,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom.

    Uses scipy when installed; otherwise a table for ``df <= 30`` and the
    Cornish-Fisher expansion around the normal quantile beyond (error < 1e-4).
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if scipy_stats is None:
        return _t975_fallback(df)
    return float(scipy_stats.t.ppf(0.975, df))


def _t975_fallback(df: int) -> float:
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """``[num_classes, num_classes]`` counts, true label on rows, prediction on columns."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} has labels outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class scores and the confusion matrix (JSON-ready).

    Args:
        y_true: gold label indices.
        y_pred: predicted label indices.
        label_names: names of labels ``0..K-1``.

    Returns:
        ``accuracy``, ``macro_f1``, ``n``; per class (name -> value):
        ``per_class_accuracy`` (recall; None for a class absent from
        ``y_true``), ``per_class_f1``, ``support``; and ``confusion_matrix`` as
        a list of lists (rows true, columns predicted) with ``label_names``.
    """
    names = [str(n) for n in label_names]
    k = len(names)
    cm = confusion_matrix(y_true, y_pred, k)
    n = int(cm.sum())
    if n == 0:
        raise ValueError("no examples to score")
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    denom = support + predicted  # 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    present = denom > 0
    return {
        "accuracy": float(tp.sum() / n),
        "macro_f1": float(f1[present].mean()),
        "n": n,
        "per_class_accuracy": {names[c]: (float(recall[c]) if support[c] > 0 else None) for c in range(k)},
        "per_class_f1": {names[c]: float(f1[c]) for c in range(k)},
        "support": {names[c]: int(support[c]) for c in range(k)},
        "label_names": names,
        "confusion_matrix": cm.tolist(),
    }


def mean_ci95(values: Sequence[float]) -> dict[str, Any]:
    """Mean and the half-width of its two-sided 95% Student-t confidence interval.

    ``ci95 = t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample standard
    deviation (ddof=1); ``ci95`` is 0 for a single value, where no spread can be
    estimated. Meant for metrics over seeds: report ``mean ± ci95``.

    Returns:
        ``{"mean", "ci95", "std", "n", "values"}``.
    """
    arr = np.asarray(list(values), dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"mean_ci95 got non-finite values: {arr.tolist()}")
    n = int(arr.size)
    mean = float(arr.mean())
    if n == 1:
        std, ci = 0.0, 0.0
    else:
        std = float(arr.std(ddof=1))
        ci = t_quantile_975(n - 1) * std / math.sqrt(n)
    return {"mean": mean, "ci95": float(ci), "std": std, "n": n, "values": arr.tolist()}


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def softmax_average(prob_list: Sequence[np.ndarray], *, from_logits: bool = False) -> np.ndarray:
    """Average the class probabilities of several models (an ensemble).

    Args:
        prob_list: arrays of the same shape ``[..., num_classes]``; probabilities,
            or logits when ``from_logits`` (each is softmaxed first, because
            averaging logits is a different ensemble).
        from_logits: apply a softmax over the last axis to each array first.

    Returns:
        The mean probability array; ``argmax(-1)`` gives the ensemble prediction.
    """
    arrays = [np.asarray(p, dtype=np.float64) for p in prob_list]
    if not arrays:
        raise ValueError("softmax_average needs at least one array")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"all arrays must have the same shape, got {sorted(shapes)}")
    if from_logits:
        arrays = [softmax(a) for a in arrays]
    return np.mean(np.stack(arrays), axis=0)
