"""The built-in offline task `synthetic`: passages labelled by the kind of article they come from."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, cli_env

from tlm_jax.data.synthetic import SYNTHETIC_KINDS, synthetic_corpus, synthetic_labelled_texts
from tlm_jax.errors import TLMError
from tlm_jax.tasks import TASKS, load_task


def test_labelled_texts_deterministic_unique_balanced() -> None:
    rows = list(synthetic_labelled_texts(60))
    assert rows == list(synthetic_labelled_texts(60))
    assert Counter(k for k, _ in rows) == {k: 60 for k in SYNTHETIC_KINDS}
    texts = [t for _, t in rows]
    assert len(set(texts)) == len(texts)  # no passage twice: a split cannot leak
    # A kind's first n passages do not depend on how many were asked for.
    short = list(synthetic_labelled_texts(20))
    for kind in SYNTHETIC_KINDS:
        assert [t for k, t in short if k == kind] == [t for k, t in rows if k == kind][:20]
    # Another seed, other articles (person passages are specific to their article; a city's
    # fixed facts can recur); a longer window, longer passages.
    other = list(synthetic_labelled_texts(60, seed=1))
    assert not {t for k, t in rows if k == "person"} & {t for k, t in other if k == "person"}
    assert len(set(texts) & {t for _, t in other}) < len(texts) // 4
    words = np.mean([len(t.split()) for t in texts])
    assert np.mean([len(t.split()) for _, t in synthetic_labelled_texts(60, window=3)]) > words
    with pytest.raises(TLMError, match="window"):
        next(synthetic_labelled_texts(5, window=5))


def test_title_sentence_left_out_and_first_word_does_not_decide() -> None:
    rows = list(synthetic_labelled_texts(300))
    # The title sentences name the kind ("X is a city in ...") and are never used.
    for _, t in rows:
        assert " is a city in " not in t and " is a professional " not in t
        assert not (t.startswith("The ") and " season was the " in t.split(".")[0])
    by_word: dict[str, Counter] = {}
    for kind, t in rows:
        by_word.setdefault(t.split()[0], Counter())[kind] += 1
    assert len(by_word["The"]) >= 3  # "The ..." opens city, team and season passages
    majority = sum(c.most_common(1)[0][1] for c in by_word.values()) / len(rows)
    assert majority < 0.85, majority


def test_disjoint_from_pretraining_documents() -> None:
    rows = list(synthetic_labelled_texts(250))
    docs = list(synthetic_corpus(3000, seed=0))  # the default pretraining corpus
    assert not {t for _, t in rows} & set(docs)
    joined = "\n".join(docs)
    # Person passages carry document-specific names and dates throughout: drawn from the
    # pretraining stream they would all be in the corpus; from the task's own stream only
    # a few templated ones are ("She later became leader of the Green Party.").
    person = [t for k, t in rows if k == "person"]
    assert sum(t in joined for t in person) <= 0.05 * len(person)


def test_task_options(monkeypatch) -> None:
    monkeypatch.delenv("TLM_DATA_DIR", raising=False)  # needs no data directory
    assert "synthetic" in TASKS
    opts = dict(rows_per_class=80, train_per_class=30, test_per_class=10, val_fraction=0.2)
    d = load_task("synthetic", seed=0, **opts)
    assert d.label_names == list(SYNTHETIC_KINDS) and d.num_classes == 4
    assert d.sizes() == {"train": 96, "val": 24, "test": 40}
    assert np.bincount(d.test_labels).tolist() == [10] * 4
    assert np.bincount(d.train_labels).tolist() == [24] * 4
    again = load_task("synthetic", seed=0, **opts)
    assert again.train_texts == d.train_texts and again.test_texts == d.test_texts
    other = load_task("synthetic", seed=1, **opts)
    assert set(other.test_texts) != set(d.test_texts)
    assert not set(d.test_texts) & set(d.train_texts + d.val_texts)
    # Nested sampling: the test split does not move when the train split grows.
    bigger = load_task("synthetic", seed=0, **(opts | {"train_per_class": 60}))
    assert set(bigger.test_texts) == set(d.test_texts)
    capped = load_task("synthetic", seed=0, rows_per_class=80, max_train=20)
    assert len(capped.train_texts) == 20
    assert capped.provenance["task"] == "synthetic"
    assert capped.provenance["counts"]["test"] == {k: 16 for k in SYNTHETIC_KINDS}
    with pytest.raises(TLMError, match="class 'person' has 80 rows"):
        load_task("synthetic", rows_per_class=80, train_per_class=75, test_per_class=10)


def test_cli_finetune_twin_on_synthetic_end_to_end(tmp_path) -> None:
    from tlm_jax.data.tokenizer import train_wordpiece

    tok = tmp_path / "tokenizer.json"
    train_wordpiece(synthetic_corpus(300), 1000).save(str(tok))
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "tlm_jax.cli", "finetune", "--pretrained", "none",
           "--tokenizer-from", str(tok), "--task", "synthetic", "--workdir", str(out),
           "--seeds", "0,1", "model.hidden=32", "model.layers=1", "model.heads=2",
           "model.intermediate=64", "model.max_len=64", "task.train_per_class=40",
           "task.test_per_class=10", "task.val_fraction=0.25", "train.epochs=6",
           # Passages are longer than 32 tokens, so every seed pads to 32 and val and test
           # have one size: the second seed and the test split reuse the compiled functions.
           "task.max_len=32",
           "train.batch_size=16", "optim.lr=3e-3", "train.checkpoint=false"]
    env = cli_env(1)
    env.pop("TLM_DATA_DIR", None)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "synthetic" and res["label_names"] == list(SYNTHETIC_KINDS)
    assert res["pretrained"]["init"] == "random"
    assert res["split_sizes"] == {"train": 120, "val": 40, "test": 40}
    assert res["seeds"] == [0, 1] and res["accuracy"]["n"] == 2
    # The task is learnable: the bag-of-words baseline and the model both beat chance (25 %).
    assert res["baseline"]["accuracy"]["mean"] > 0.6
    assert res["accuracy"]["mean"] > 0.4
    assert Path(out / "seed_1" / "test_logits.npy").is_file()
