"""Tests for tlm_jax.data.subset: deterministic, streaming corpus subsets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tlm_jax.data import subset as subset_mod
from tlm_jax.data.sources import iter_documents
from tlm_jax.data.subset import SubsetPlan, iter_selected, plan_subset, take_words
from tlm_jax.errors import TLMError

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("TLM_DATA_DIR", REPO.parent / "shared" / "data"))
WIKI = DATA_DIR / "wikipedia_en_excerpt" / "enwiki_wikiextractor_AA_wiki_00-63.txt.gz"


def corpus(n: int):
    """A doc factory over ``n`` documents named by their index."""
    return lambda: (f"doc {i}" for i in range(n))


def _check_plan(plan: SubsetPlan) -> None:
    for ids in (plan.train_ids, plan.val_ids):
        assert ids.dtype == np.int64
        assert np.all(np.diff(ids) > 0)  # sorted, unique
    assert np.intersect1d(plan.train_ids, plan.val_ids).size == 0


# --------------------------------------------------------------------------- modes


def test_all_mode() -> None:
    plan = plan_subset(corpus(10))
    _check_plan(plan)
    assert plan.total_docs == 10
    np.testing.assert_array_equal(plan.train_ids, np.arange(10))
    assert plan.val_ids.size == 0


def test_first_mode_takes_first_n_and_counts_all() -> None:
    plan = plan_subset(corpus(1000), mode="first", num_docs=100, val_docs=10, seed=4)
    _check_plan(plan)
    assert plan.total_docs == 1000
    np.testing.assert_array_equal(np.union1d(plan.train_ids, plan.val_ids), np.arange(100))
    assert (plan.num_train, plan.num_val) == (90, 10)


def test_random_mode_deterministic_and_seed_dependent() -> None:
    a = plan_subset(corpus(5000), mode="random", num_docs=300, seed=7)
    b = plan_subset(corpus(5000), mode="random", num_docs=300, seed=7)
    c = plan_subset(corpus(5000), mode="random", num_docs=300, seed=8)
    _check_plan(a)
    assert a == b
    assert a.train_ids.size == 300 and a.total_docs == 5000
    assert a.train_ids.max() < 5000
    # Different seeds give (almost entirely) different sets: expected overlap is 300*300/5000.
    assert np.intersect1d(a.train_ids, c.train_ids).size < 60


def test_random_is_prefix_of_seeded_shuffle() -> None:
    small = plan_subset(corpus(3000), mode="random", num_docs=100, seed=1)
    large = plan_subset(corpus(3000), mode="random", num_docs=1000, seed=1)
    assert np.isin(small.train_ids, large.train_ids).all()
    full = plan_subset(corpus(3000), mode="random", num_docs=3000, seed=1)
    np.testing.assert_array_equal(full.train_ids, np.arange(3000))


def test_random_matches_brute_force_across_chunks() -> None:
    # More documents than one hashing chunk, so the bounded buffer is merged several times.
    n, k, seed = 2 * subset_mod._CHUNK + 123, 777, 3
    plan = plan_subset(corpus(n), mode="random", num_docs=k, seed=seed)
    keys = subset_mod._keys(np.arange(n), seed, subset_mod._SALT_SELECT)
    assert np.unique(keys).size == n  # the hash is a bijection: no ties
    np.testing.assert_array_equal(plan.train_ids, np.sort(np.argsort(keys)[:k]))


@pytest.mark.parametrize("seed", [0, 1, 2, 12345])
def test_random_is_roughly_uniform_over_the_stream(seed: int) -> None:
    n, k = 20_000, 2_000
    plan = plan_subset(corpus(n), mode="random", num_docs=k, seed=seed)
    counts = np.bincount(plan.train_ids * 10 // n, minlength=10)
    chi2 = float(((counts - k / 10) ** 2 / (k / 10)).sum())
    assert chi2 < 33.7, counts  # 99.99% quantile of chi-square with 9 degrees of freedom
    assert abs(plan.train_ids.mean() - n / 2) < 0.05 * n
    # Also uniform at fine scale: no long runs of consecutive indices.
    assert np.mean(np.diff(plan.train_ids) == 1) < 0.25


# --------------------------------------------------------------------------- validation split


def test_val_split_exact_sizes_disjoint_deterministic() -> None:
    a = plan_subset(corpus(1000), mode="random", num_docs=400, seed=5, val_fraction=0.1)
    _check_plan(a)
    assert (a.num_train, a.num_val) == (360, 40)
    b = plan_subset(corpus(1000), mode="random", num_docs=400, seed=5, val_fraction=0.1)
    np.testing.assert_array_equal(a.val_ids, b.val_ids)
    c = plan_subset(corpus(1000), mode="random", num_docs=400, seed=6, val_fraction=0.1)
    assert not np.array_equal(a.val_ids, c.val_ids)
    # val_fraction rounds half up: 0.025 * 100 = 2.5 -> 3.
    d = plan_subset(corpus(100), val_fraction=0.025)
    assert (d.num_train, d.num_val) == (97, 3)
    e = plan_subset(corpus(100), val_docs=1)
    assert (e.num_train, e.num_val) == (99, 1)


def test_val_split_spread_over_selection() -> None:
    plan = plan_subset(corpus(10_000), val_docs=1000, seed=0)
    counts = np.bincount(plan.val_ids * 10 // 10_000, minlength=10)
    assert counts.min() > 60 and counts.max() < 140


# --------------------------------------------------------------------------- errors


def test_errors() -> None:
    with pytest.raises(TLMError, match="needs num_docs"):
        plan_subset(corpus(10), mode="random")
    with pytest.raises(TLMError, match="needs num_docs"):
        plan_subset(corpus(10), mode="first")
    with pytest.raises(TLMError, match="num_docs=11 but the corpus has only 10 documents") as e:
        plan_subset(corpus(10), mode="random", num_docs=11)
    assert "num_docs <= 10" in e.value.fix
    with pytest.raises(TLMError, match="only 10 documents"):
        plan_subset(corpus(10), mode="first", num_docs=50)
    with pytest.raises(TLMError, match="training subset empty"):
        plan_subset(corpus(10), val_docs=10)
    with pytest.raises(TLMError, match="training subset empty"):
        plan_subset(corpus(1), mode="first", num_docs=1, val_fraction=0.9)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(TLMError, match=r"outside \[0, 1\)"):
            plan_subset(corpus(10), val_fraction=bad)
    with pytest.raises(TLMError, match="rounds to 0 validation"):
        plan_subset(corpus(10), val_fraction=0.01)
    with pytest.raises(TLMError, match="unknown subset mode 'shuffle'"):
        plan_subset(corpus(10), mode="shuffle", num_docs=3)
    with pytest.raises(TLMError, match="no documents"):
        plan_subset(corpus(0))
    with pytest.raises(TLMError, match="must be positive"):
        plan_subset(corpus(10), mode="first", num_docs=0)
    with pytest.raises(TLMError, match="subset mode is 'all'"):
        plan_subset(corpus(10), num_docs=5)
    with pytest.raises(TLMError, match="both val_docs"):
        plan_subset(corpus(10), val_docs=1, val_fraction=0.1)


# --------------------------------------------------------------------------- iter_selected


def test_iter_selected_stream_order_and_stops_early() -> None:
    pulled: list[int] = []

    def factory() -> Iterator[str]:
        for i in range(100):
            pulled.append(i)
            yield f"doc {i}"

    out = list(iter_selected(factory, np.array([42, 3, 17, 17])))
    assert out == ["doc 3", "doc 17", "doc 42"]
    assert pulled[-1] == 42  # nothing read past the last wanted document
    assert list(iter_selected(factory, np.array([], dtype=np.int64))) == []


def test_iter_selected_plan_roundtrip() -> None:
    plan = plan_subset(corpus(500), mode="random", num_docs=50, seed=2, val_docs=5)
    train = list(iter_selected(corpus(500), plan.train_ids))
    val = list(iter_selected(corpus(500), plan.val_ids))
    assert train == [f"doc {i}" for i in plan.train_ids]
    assert val == [f"doc {i}" for i in plan.val_ids]
    assert not set(train) & set(val)


def test_iter_selected_detects_changed_source() -> None:
    with pytest.raises(TLMError, match="ended after 10 documents, before index 12"):
        list(iter_selected(corpus(10), np.array([1, 12])))
    shared = corpus(10)()  # not a factory of fresh iterators: planning exhausts it
    plan = plan_subset(lambda: shared, mode="first", num_docs=3)
    with pytest.raises(TLMError, match="ended after 0 documents.*fresh iterator"):
        list(iter_selected(lambda: shared, plan.train_ids))
    with pytest.raises(TLMError, match="negative"):
        iter_selected(corpus(10), np.array([-1, 2]))


# --------------------------------------------------------------------------- take_words


def test_take_words() -> None:
    pulled: list[int] = []

    def docs() -> Iterator[str]:
        for i in range(10):
            pulled.append(i)
            yield " ".join(["w"] * (i + 1))  # doc i has i + 1 words

    # 1 + 2 + 3 = 6 < 7 <= 1 + 2 + 3 + 4 = 10: the doc that reaches the budget is kept.
    assert [len(d.split()) for d in take_words(docs(), 7)] == [1, 2, 3, 4]
    assert pulled == [0, 1, 2, 3]
    assert [len(d.split()) for d in take_words(docs(), 6)] == [1, 2, 3]
    assert len(list(take_words(docs(), 10**9))) == 10
    assert list(take_words(docs(), 0)) == []
    with pytest.raises(TLMError, match="negative"):
        take_words(docs(), -1)


# --------------------------------------------------------------------------- real sources


def test_synthetic_source_end_to_end() -> None:
    factory = lambda: iter_documents("synthetic", [], synthetic_docs=400, synthetic_seed=1)
    plan = plan_subset(factory, mode="random", num_docs=100, seed=0, val_fraction=0.1)
    assert (plan.total_docs, plan.num_train, plan.num_val) == (400, 90, 10)
    texts = list(iter_selected(factory, plan.train_ids))
    everything = list(factory())
    assert texts == [everything[i] for i in plan.train_ids]


def test_real_wikipedia_random_subset() -> None:
    if not WIKI.exists():
        pytest.skip(f"real data not found at {WIKI} (set TLM_DATA_DIR)")
    factory = lambda: iter_documents("wikiextractor", [str(WIKI)])
    plan = plan_subset(factory, mode="random", num_docs=2000, seed=0, val_docs=100)
    assert plan.total_docs == 36_183
    assert (plan.num_train, plan.num_val) == (1900, 100)
    assert plan.train_ids.max() > 30_000  # drawn from the whole file, not its start
    val = list(iter_selected(factory, plan.val_ids))
    assert len(val) == 100 and all(v.strip() for v in val)
