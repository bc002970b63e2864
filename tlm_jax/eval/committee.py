"""Soft committees: scoring averaged softmax outputs, and timing committee vs single-model inference.

A soft committee of ``k`` fine-tuned classifiers predicts the argmax of the
mean of their softmax outputs (:func:`tlm_jax.eval.metrics.softmax_average`).
:func:`committee_scores` scores that from the ``seed_<s>/test_logits.npy`` files
``tlm finetune`` writes; :func:`measure_latency` times the jitted forward pass
of a committee (members run one after another) and of a single model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from tlm_jax.errors import TLMError
from tlm_jax.eval.metrics import classification_report, softmax_average
from tlm_jax.models.batching import default_chunk_rows, map_in_chunks
from tlm_jax.models.classifier import SequenceClassifier
from tlm_jax.sharding import unbox


def committee_scores(member_dirs: Sequence[str | os.PathLike], seeds: Sequence[int],
                     label_names: Sequence[str]) -> dict[int, list[dict[str, Any]]]:
    """Per committee size ``k`` (the first ``k`` members), per-seed scores of the averaged softmax.

    Args:
        member_dirs: fine-tuning output directories (``tlm finetune --workdir``) of
            the members, all on the same task with the same seeds.
        seeds: the seeds to score; each member needs ``seed_<s>/test_logits.npy``
            and ``seed_<s>/test_labels.npy``.
        label_names: the task's class names.

    Returns:
        ``{k: [{"seed", "accuracy", "macro_f1"}, ...]}`` for ``k = 1..len(member_dirs)``.

    Raises:
        TLMError: a member's files are missing, or members were tested on different
            splits.
    """
    dirs = [Path(d) for d in member_dirs]
    out: dict[int, list[dict[str, Any]]] = {}
    for k in range(1, len(dirs) + 1):
        rows = []
        for s in seeds:
            logits, labels = [], []
            for d in dirs[:k]:
                sdir = d / f"seed_{s}"
                if not (sdir / "test_logits.npy").is_file():
                    raise TLMError(f"{sdir} has no test_logits.npy",
                                   f"fine-tune that member with seed {s} first")
                logits.append(np.load(sdir / "test_logits.npy"))
                labels.append(np.load(sdir / "test_labels.npy"))
            if any(not np.array_equal(labels[0], lab) for lab in labels[1:]):
                raise TLMError(f"committee members disagree on the test split of seed {s}",
                               "fine-tune every member on the same task and split options")
            probs = softmax_average(logits, from_logits=True)
            rep = classification_report(labels[0], probs.argmax(-1), list(label_names))
            rows.append({"seed": s, "accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"]})
        out[k] = rows
    return out


def measure_latency(model_cfgs: dict[str, tuple[Any, int]], num_classes: int, length: int,
                    batches: Sequence[int], repeats: int,
                    log: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Wall time of a jitted classification forward pass per model group and batch size.

    Weights are random (timing does not depend on them); inputs are random ids of
    ``length`` tokens. Each group is compiled and warmed up per batch size first.

    Args:
        model_cfgs: name -> ``(ModelConfig, copies)``; a group of ``copies`` models
            runs its members one after another (a committee), each with its own
            weights.
        num_classes: classifier outputs.
        length: sequence length.
        batches: batch sizes to time.
        repeats: timed runs per batch size.
        log: called with one summary line per group.

    Returns:
        ``{name: {str(batch): {"median_ms", "p10_ms", "p90_ms", "examples_per_s"}}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    # On a CPU large batches run in cache-sized row chunks (tlm_jax/models/batching.py).
    rows = default_chunk_rows(length)
    for name, (mcfg, copies) in model_cfgs.items():
        model = SequenceClassifier(mcfg, num_classes)
        ids0 = np.ones((1, length), np.int32)
        params = [unbox(model.init(jax.random.PRNGKey(i), {"input_ids": ids0}))
                  for i in range(copies)]

        def _fwd(v: Any, ids: Any, model: Any = model) -> Any:
            return model.apply(v, {"input_ids": ids, "attention_mask": ids > 0})["class_logits"]

        fwd = jax.jit(lambda v, ids, _fwd=_fwd: map_in_chunks(lambda x: _fwd(v, x), rows)(ids))
        res: dict[str, Any] = {}
        for b in batches:
            ids = np.random.default_rng(0).integers(5, mcfg.vocab_size, (b, length)).astype(
                np.int32)
            for p in params:  # compile + warm up
                fwd(p, ids).block_until_ready()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                outs = [fwd(p, ids) for p in params]
                for o in outs:
                    o.block_until_ready()
                times.append(time.perf_counter() - t0)
            times_ms = np.asarray(times) * 1000
            median_s = float(np.median(times))
            res[str(b)] = {"median_ms": float(np.median(times_ms)),
                           "p10_ms": float(np.percentile(times_ms, 10)),
                           "p90_ms": float(np.percentile(times_ms, 90)),
                           "examples_per_s": float(b / median_s) if median_s else 0.0}
        out[name] = res
        if log is not None:
            log(f"latency {name}: " + ", ".join(f"b{b} {res[str(b)]['median_ms']:.1f} ms"
                                                 for b in batches))
    return out
