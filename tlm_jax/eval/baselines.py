"""Simple baselines on the same split as the model, for every accuracy table."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from tlm_jax.data.labeled import ClassificationData
from tlm_jax.eval.metrics import classification_report


def tfidf_logreg_baseline(
    data: ClassificationData,
    seed: int = 0,
    *,
    C: float = 10.0,  # noqa: N803 - scikit-learn's name for it
    max_features: int | None = 200_000,
    max_iter: int = 2000,
) -> dict[str, Any]:
    """TF-IDF (word 1-2 grams, sublinear tf) + logistic regression, scored on ``data``'s test split.

    Fits on the train split only (validation rows are not used). ``C=10`` is
    the usual setting for L2-normalised TF-IDF features, which are small enough
    that scikit-learn's default ``C=1`` over-regularises.

    With no word in any training text, or a single training class, there is nothing to fit:
    it predicts the majority class and says so in ``fallback``.

    Returns:
        The :func:`~tlm_jax.eval.metrics.classification_report` of the test
        split plus ``method``, ``params``, ``train_size``, ``test_size``,
        ``num_features``, ``fit_seconds`` and ``predict_seconds`` (and ``fallback``).
    """
    params = {
        "ngram_range": [1, 2],
        "sublinear_tf": True,
        "min_df": 1,
        "max_features": max_features,
        "C": C,
        "max_iter": max_iter,
        "solver": "saga",
        "seed": seed,
    }
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(
        ngram_range=(1, 2),
        sublinear_tf=True,
        min_df=1,
        max_features=max_features,
        lowercase=True,
        strip_accents="unicode",
        dtype=np.float64,
    )
    labels = np.asarray(data.train_labels)
    try:
        x_train = vectorizer.fit_transform(data.train_texts)
    except ValueError:  # "empty vocabulary": no word in any training text
        x_train = None
    fallback = None
    if x_train is None or len(np.unique(labels)) < 2:
        # Nothing to fit (no word, or one class): the baseline is the majority class, said so.
        fallback = "no word in the training texts" if x_train is None else "one training class"
        majority = int(np.bincount(labels).argmax()) if len(labels) else 0
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        predictions = np.full(len(data.test_texts), majority)
    else:
        # saga reaches the same optimum as lbfgs here, several times faster on
        # wide sparse TF-IDF matrices.
        model = LogisticRegression(C=C, max_iter=max_iter, solver="saga", random_state=seed)
        model.fit(x_train, labels)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        predictions = model.predict(vectorizer.transform(data.test_texts))
    predict_seconds = time.perf_counter() - start
    report = classification_report(data.test_labels, predictions, data.label_names)
    report.update(
        {
            "method": "tfidf_logreg",
            "params": params,
            "train_size": len(data.train_texts),
            "test_size": len(data.test_texts),
            "num_features": int(x_train.shape[1]) if x_train is not None else 0,
            "fit_seconds": round(fit_seconds, 4),
            "predict_seconds": round(predict_seconds, 4),
        }
    )
    if fallback is not None:
        report["fallback"] = f"majority class ({fallback})"
    return report
