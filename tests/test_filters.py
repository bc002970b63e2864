"""Data-curation filters: threshold rules, scorers, metadata, counts in data_info, cache keys."""

from __future__ import annotations

import datetime as dt
import json
import re

import numpy as np
import pytest

from tlm_jax.config import load_config
from tlm_jax.data import filters as F
from tlm_jax.data.corpus import prepare_corpus
from tlm_jax.data.sources import iter_documents, iter_records
from tlm_jax.errors import TLMError
from tlm_jax.eval.temporal import temporal_degradation

# ----------------------------------------------------------------------------- rules


def test_stricter_thresholds_keep_subsets() -> None:
    s = np.random.default_rng(0).random(500)
    for lo, hi in ((0.2, 0.5), (0.5, 0.9), (0.9, 0.975)):
        small, big = F.Rule(max=lo).keep_mask(s), F.Rule(max=hi).keep_mask(s)
        assert not (small & ~big).any()  # kept(T1) is inside kept(T2)
    for q1, q2 in ((0.1, 0.3), (0.3, 0.9)):
        assert not (F.Rule(keep=q1).keep_mask(s) & ~F.Rule(keep=q2).keep_mask(s)).any()
        assert not (F.Rule(keep=q1, inverse=True).keep_mask(s)
                    & ~F.Rule(keep=q2, inverse=True).keep_mask(s)).any()


def test_filter_and_inverse_never_both_drop_a_doc() -> None:
    s = np.round(np.random.default_rng(1).random(300), 2)  # ties, some exactly at T
    for t in (0.06, 0.3, 0.5, 0.9):
        dropped = ~F.Rule(max=t).keep_mask(s)
        dropped_inv = ~F.Rule(min=t).keep_mask(s)
        assert not (dropped & dropped_inv).any()
        assert (dropped | dropped_inv).sum() == (s != t).sum()


@pytest.mark.parametrize("n", [7, 100, 999])
def test_percentile_threshold_keeps_q_within_one_doc(n) -> None:
    s = np.random.default_rng(n).random(n)
    for q in (0.05, 0.25, 0.5, 0.7, 0.975, 1.0):
        for inverse in (False, True):
            kept = F.Rule(keep=q, inverse=inverse).keep_mask(s)
            assert abs(kept.mean() - q) <= 1 / n + 1e-12
        # The lowest scores are the ones kept (highest for the inverse).
        kept = F.Rule(keep=q).keep_mask(s)
        assert s[kept].max() <= s[~kept].min() if (~kept).any() else True


def test_result_depends_only_on_scores_not_order() -> None:
    rng = np.random.default_rng(2)
    s = np.round(rng.random(200), 1)
    s[::17] = np.nan
    perm = rng.permutation(200)
    for rule in (F.Rule(max=0.5), F.Rule(keep=0.3), F.Rule(keep=0.6, inverse=True),
                 F.Rule(min=0.2, missing="keep")):
        np.testing.assert_array_equal(rule.keep_mask(s)[perm], rule.keep_mask(s[perm]))


def test_missing_scores_follow_the_rule() -> None:
    s = np.array([0.1, np.nan, 0.9])
    assert F.Rule(max=1.0).keep_mask(s).tolist() == [True, False, True]
    assert F.Rule(max=1.0, missing="keep").keep_mask(s).tolist() == [True, True, True]


def test_apply_filters_counts_in_order() -> None:
    specs = F.parse_filters(["toxicity", "quality"], {"toxicity": {"max": 0.5},
                                                      "quality": {"scorer": "lexicon", "max": 0.2}})
    scores = {"toxicity": np.array([0.0, 0.6, 0.7, 0.1, 0.0]),
              "quality": np.array([0.3, 0.3, 0.0, 0.1, 0.0])}
    keep, info = F.apply_filters(specs, scores)
    assert keep.tolist() == [False, False, False, True, True]
    assert [(r["input"], r["kept"], r["dropped"], r["dropped_alone"]) for r in info] == \
        [(5, 3, 2, 2), (3, 2, 1, 2)]
    assert info[0]["bounds"] == [None, 0.5]


# ----------------------------------------------------------------------------- scorers


def test_lexicon_toxicity_scores_word_fractions() -> None:
    sc = F.LexiconToxicity()
    s = sc.score([F.Doc("You stupid idiot, go away now."), F.Doc("A history of the hatred."),
                  F.Doc("Nothing here."), F.Doc("")])
    np.testing.assert_allclose(s, [2 / 6, 1 / 5, 0.0, 0.0])
    assert "war" not in F.TOXICITY_LEXICON  # topic words would make it a topic filter
    custom = F.LexiconToxicity(lexicon=["banana"])
    assert custom.score([F.Doc("Banana split")])[0] == 0.5
    assert custom.fingerprint() != sc.fingerprint()


def test_no_domain_mix_removes_only_that_domain() -> None:
    rng = np.random.default_rng(3)
    domains = rng.choice(["cc", "books", "wiki", "code"], size=400, p=[0.4, 0.3, 0.2, 0.1])
    docs = [F.Doc(f"d{i}", {"meta": {"pile_set_name": d}}) for i, d in enumerate(domains)]
    spec = F.parse_filters(["domain"], {"domain": {"field": "meta.pile_set_name",
                                                   "drop": ["books"]}})
    scorer = F.get_scorer(spec[0].scorer, **spec[0].options)
    keep, info = F.apply_filters(spec, {"domain": scorer.score(docs)})
    kept = domains[keep]
    assert "books" not in kept
    others = domains[domains != "books"]
    assert len(kept) == len(others)
    for d in ("cc", "wiki", "code"):  # the other domains' ratios are unchanged
        assert (kept == d).mean() == pytest.approx((others == d).mean())
    only = F.DomainScorer(field="meta.pile_set_name", keep_only=["wiki"])
    assert only.score(docs[:5]).tolist() == [float(d != "wiki") for d in domains[:5]]
    with pytest.raises(TLMError, match="exactly one of drop"):
        F.DomainScorer(drop=["a"], keep_only=["b"])


def test_dates_parse_to_ordinals() -> None:
    assert F.date_ordinal("2019-03-04") == dt.date(2019, 3, 4).toordinal()
    assert F.date_ordinal("2019-03") == dt.date(2019, 3, 1).toordinal()
    assert F.date_ordinal(2016) == dt.date(2016, 1, 1).toordinal()
    assert F.date_ordinal("2020-01-02T10:00:00Z") == dt.date(2020, 1, 2).toordinal()
    assert np.isnan(F.date_ordinal("yesterday")) and np.isnan(F.date_ordinal(None))


def test_parse_filters_refuses_bad_settings(monkeypatch) -> None:
    with pytest.raises(TLMError, match="unknown filter 'shiny'"):
        F.parse_filters(["shiny"], {"shiny": {"max": 1}})
    with pytest.raises(TLMError, match="not in data.filters"):
        F.parse_filters(["toxicity"], {"toxicity": {"max": 1}, "age": {"cutoff": "2019"}})
    with pytest.raises(TLMError, match="needs a threshold"):
        F.parse_filters(["toxicity"], {})
    with pytest.raises(TLMError, match="keep=1.5"):
        F.parse_filters(["toxicity"], {"toxicity": {"keep": 1.5}})
    with pytest.raises(TLMError, match="not a date"):
        F.parse_filters(["age"], {"age": {"cutoff": "soon"}})
    with pytest.raises(TLMError, match="unknown document scorer 'shiny'"):
        F.get_scorer("shiny")
    # The data layer cannot run models: without tlm_jax.train.docscore the error says so.
    monkeypatch.delitem(F.SCORERS, "perplexity", raising=False)
    with pytest.raises(TLMError, match="registered by tlm_jax.train.docscore"):
        F.get_scorer("perplexity", run="x")
    age = F.parse_filters(["age"], {"age": {"cutoff": "2019-06-30", "field": "meta.date"}})[0]
    assert age.rule.max == dt.date(2019, 6, 30).toordinal() and age.options == {"field": "meta.date"}


def test_temporal_degradation_recovers_the_slope() -> None:
    py = [2013, 2013, 2013, 2016, 2016, 2016, 2019, 2019, 2019]
    ey = [2013, 2016, 2019] * 3
    scores = [80 - 1.5 * abs(a - b) for a, b in zip(py, ey, strict=True)]
    td = temporal_degradation(py, ey, scores)
    assert td["td"] == pytest.approx(1.5) and td["intercept"] == pytest.approx(80)
    assert td["r"] == pytest.approx(1.0)
    flat = temporal_degradation(py, ey, [70.0] * 9)
    assert flat["td"] == 0.0 and flat["r"] == 0.0
    with pytest.raises(TLMError, match="same year distance"):
        temporal_degradation([2013, 2016], [2013, 2016], [1, 2])


# ----------------------------------------------------------------------------- metadata + corpus

WORDS = ("river city music film school team player season album station village county "
         "species church history island north south war party")


def _write_jsonl(path, n=90):
    rng = np.random.default_rng(0)
    vocab = WORDS.split()
    rows = []
    for i in range(n):
        body = " ".join(rng.choice(vocab, size=25))
        year = 2012 + i % 11
        rec = {"id": i, "text": f"doc{i} year{year} {body}" + (" stupid idiot" if i % 7 == 0 else ""),
               "meta": {"domain": ["web", "books", "wiki"][i % 3]}}
        if i % 10:
            rec["date"] = f"{year}-0{1 + i % 9}-15"
        rows.append(rec)
    rows.insert(5, {"id": -1, "text": "   ", "date": "2013"})  # skipped by min_chars, like iter_documents
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return rows


def test_iter_records_is_aligned_with_iter_documents(tmp_path) -> None:
    p = tmp_path / "c.jsonl"
    _write_jsonl(p, n=20)
    recs = list(iter_records("jsonl", [str(p)]))
    assert [t for t, _ in recs] == list(iter_documents("jsonl", [str(p)]))
    assert recs[0][1]["meta"]["domain"] == "web" and "text" not in recs[0][1]
    pile = tmp_path / "p.jsonl"
    pile.write_text("\n".join(json.dumps({"text": f"t{i}", "meta": {"pile_set_name": s}})
                              for i, s in enumerate(["A", "B", "A", "C"])) + "\n")
    got = list(iter_records("pile", [str(pile)], domains=["A", "C"]))
    assert [t for t, _ in got] == list(iter_documents("pile", [str(pile)], domains=["A", "C"]))
    assert [m["meta"]["pile_set_name"] for _, m in got] == ["A", "A", "C"]
    assert list(iter_records("lines", [str(p)]))[0][1] == {}


def _data_cfg(path, *extra):
    return load_config(None, ["data.source=jsonl", f"data.paths=[{path}]", "data.vocab_size=200",
                              "data.val_docs=6", "data.max_len=32", "model.max_len=32",
                              *extra]).data


def _year(text):
    return int(re.search(r"year(\d{4})", text).group(1))


def test_age_filter_keeps_nothing_after_the_cutoff_and_logs_counts(tmp_path) -> None:
    p = tmp_path / "dated.jsonl"
    rows = _write_jsonl(p)
    logs: list[str] = []
    base = prepare_corpus(_data_cfg(p), progress=False, log=logs.append)
    assert "filters" not in base.info
    cfg = _data_cfg(p, "data.filters=[age]", "data.filter_options.age.cutoff=2016-12-31")
    corpus = prepare_corpus(cfg, progress=False, log=logs.append)
    kept = list(corpus.documents())
    assert kept and all(_year(t) <= 2016 for t in kept)
    (row,) = corpus.info["filters"]
    # Undated documents are dropped by default: they cannot be shown to predate the cutoff.
    n_train = base.info["train_docs"]
    assert row["input"] == n_train and row["kept"] == len(kept) == corpus.info["train_docs"]
    assert row["kept"] + row["dropped"] == n_train and row["missing"] > 0
    dated = {r["text"]: r.get("date") for r in rows}
    base_docs = list(base.documents())
    expect = sum(1 for t in base_docs if dated[t] and dated[t] <= "2016-12-31")
    assert row["kept"] == expect
    assert any(m.startswith("filter age") and f"kept {row['kept']:,}" in m for m in logs)
    # Validation documents are not filtered; the token cache key includes the filters.
    assert corpus.info["val_docs"] == base.info["val_docs"] == 6
    assert corpus.info["cache_dir"] != base.info["cache_dir"]
    keep_missing = prepare_corpus(_data_cfg(p, "data.filters=[age]",
                                            "data.filter_options.age.cutoff=2016-12-31",
                                            "data.filter_options.age.missing=keep"),
                                  progress=False, log=logs.append)
    assert keep_missing.info["filters"][0]["kept"] == expect + row["missing"]
    again = prepare_corpus(cfg, progress=False, log=logs.append)
    assert again.info["cache_dir"] == corpus.info["cache_dir"] and again.info["cache_reused"]


def test_chained_filters_and_their_cache_keys(tmp_path) -> None:
    p = tmp_path / "c.jsonl"
    _write_jsonl(p)
    opts = ["data.filters=[toxicity,domain]", "data.filter_options.domain.field=meta.domain",
            "data.filter_options.domain.drop=[books]"]
    a = prepare_corpus(_data_cfg(p, *opts, "data.filter_options.toxicity.max=0.0"),
                       progress=False, log=lambda _: None)
    docs = list(a.documents())
    assert not any("idiot" in t for t in docs)
    assert not any(int(t.split()[0][3:]) % 3 == 1 for t in docs)  # books: i % 3 == 1
    tox, dom = a.info["filters"]
    assert dom["input"] == tox["kept"] and dom["kept"] == len(docs)
    b = prepare_corpus(_data_cfg(p, *opts, "data.filter_options.toxicity.max=0.5"),
                       progress=False, log=lambda _: None)
    assert b.info["filters"][0]["kept"] == b.info["filters"][0]["input"]
    assert a.info["cache_dir"] != b.info["cache_dir"]


# ----------------------------------------------------------------------------- perplexity


@pytest.fixture(scope="module")
def scoring_run(tmp_path_factory):
    """A tiny MLM run on the synthetic corpus (a few seconds)."""
    from tlm_jax.train.loop import pretrain

    wd = tmp_path_factory.mktemp("ppl_run")
    cfg = load_config(None, ["model.hidden=32", "model.layers=1", "model.heads=2",
                             "model.intermediate=64", "model.max_len=32", "data.max_len=32",
                             "data.synthetic_docs=300", "data.vocab_size=1000",
                             "train.batch_size=16", "train.steps=40", "optim.lr=5e-3",
                             "optim.warmup_steps=4", "train.eval_every=0",
                             "train.progress=false", "train.tensorboard=false"])
    pretrain(cfg, wd, log=lambda _: None)
    return wd


def test_perplexity_scores_real_text_below_random_text(scoring_run) -> None:
    from tlm_jax.data.synthetic import synthetic_corpus
    from tlm_jax.data.tokenizer import load_tokenizer
    from tlm_jax.train.docscore import PerplexityScorer

    real = list(synthetic_corpus(340, 0))[300:]  # documents the run did not train on
    vocab = [t for t in load_tokenizer(scoring_run / "tokenizer.json").get_vocab()
             if t.isalpha() and len(t) > 2]
    rng = np.random.default_rng(0)
    noise = [" ".join(rng.choice(vocab, size=40)) for _ in range(40)]
    sc = PerplexityScorer(str(scoring_run), batch_size=16)
    s_real = sc.score([F.Doc(t) for t in real])
    s_noise = sc.score([F.Doc(t) for t in noise])
    assert np.isfinite(s_real).all() and s_real.mean() < s_noise.mean() - 0.5
    # Fixed masks: the same documents score the same; the fingerprint names run and settings.
    np.testing.assert_allclose(sc.score([F.Doc(t) for t in real]), s_real)
    assert sc.fingerprint().startswith("perplexity:")
    assert sc.fingerprint() != PerplexityScorer(str(scoring_run), passes=2).fingerprint()
    assert np.isnan(sc.score([F.Doc("")])[0])  # no ordinary tokens: no score


def test_quality_filter_through_prepare_corpus(scoring_run, tmp_path) -> None:
    import tlm_jax.train.docscore  # noqa: F401  (registers the perplexity scorer)

    p = tmp_path / "c.jsonl"
    _write_jsonl(p)
    logs: list[str] = []
    cfg = _data_cfg(p, "data.filters=[quality]", f"data.filter_options.quality.run={scoring_run}",
                    "data.filter_options.quality.keep=0.5")
    corpus = prepare_corpus(cfg, progress=False, log=logs.append)
    (row,) = corpus.info["filters"]
    assert row["scorer"] == "perplexity"
    assert abs(row["kept"] - row["input"] / 2) <= 1 and corpus.info["train_docs"] == row["kept"]
    assert any(m.startswith("filters: scored") for m in logs)
    logs.clear()
    prepare_corpus(cfg, progress=False, log=logs.append)
    assert not any(m.startswith("filters: scored") for m in logs)  # scores are cached
