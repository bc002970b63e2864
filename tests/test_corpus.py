"""Corpus preparation: subset -> tokenizer -> token cache, reused on the second run."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from tlm_jax.config import load_config
from tlm_jax.data.corpus import (
    RewriteSpec,
    build_token_cache,
    build_tokenizer,
    doc_factory,
    filter_documents,
    plan_documents,
    prepare_corpus,
    record_factory,
    resolve_corpus,
    rewrite_documents,
    select_documents,
    source_key,
)
from tlm_jax.data.synthetic import synthetic_corpus
from tlm_jax.data.tokenizer import load_tokenizer
from tlm_jax.errors import TLMError

WIKI = ["data.source=wikiextractor", "data.paths=[$TLM_DATA_DIR/wikipedia_en_excerpt/*.gz]"]


def test_second_run_reuses_cache_and_skips_tokenizing(tmp_path, data_dir) -> None:
    cfg = load_config(None, [*WIKI, "data.subset=random", "data.num_docs=1500", "data.vocab_size=4000",
                             f"data.cache_dir={tmp_path}", "data.val_docs=50"]).data
    t0 = time.perf_counter()
    first = prepare_corpus(cfg, progress=False, log=lambda _: None)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = prepare_corpus(cfg, progress=False, log=lambda _: None)
    t_second = time.perf_counter() - t0
    assert not first.info["cache_reused"] and second.info["cache_reused"]
    assert first.info["train_docs"] == 1450 and first.info["val_docs"] == 50
    np.testing.assert_array_equal(np.asarray(first.train.tokens), np.asarray(second.train.tokens))
    assert first.info["tokenizer_hash"] == second.info["tokenizer_hash"]
    assert t_second < t_first
    # round trip: decoding a cached document gives its words back
    text = first.tokenizer.decode(first.train.doc(0).tolist())
    assert len(text.split()) > 3


def test_token_budget_and_loaded_vocab(tmp_path, data_dir) -> None:
    base = [*WIKI, "data.subset=first", "data.num_docs=300", f"data.cache_dir={tmp_path}",
            "data.vocab_size=2000"]
    c = prepare_corpus(load_config(None, [*base, "data.num_tokens=20000"]).data, progress=False,
                       log=lambda _: None)
    assert c.train.num_tokens == 20000
    path = tmp_path / "tok.json"
    c.tokenizer.save(str(path))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(t for t, _ in sorted(c.tokenizer.get_vocab().items(),
                                                      key=lambda kv: kv[1])) + "\n")
    for p in (path, vocab):
        loaded = prepare_corpus(load_config(None, [*base, f"data.tokenizer={p}"]).data,
                                progress=False, log=lambda _: None)
        assert loaded.special.vocab_size == c.special.vocab_size
        assert load_tokenizer(p).encode("the city").ids == c.tokenizer.encode("the city").ids


def test_missing_source_is_a_clear_error(tmp_path) -> None:
    cfg = load_config(None, ["data.source=jsonl", f"data.paths=[{tmp_path}/nope.jsonl]",
                             f"data.cache_dir={tmp_path}"]).data
    with pytest.raises(TLMError):
        prepare_corpus(cfg, progress=False, log=lambda _: None)


# ----------------------------------------------------------------------------- single stages

SMALL = ["data.synthetic_docs=120", "data.vocab_size=300", "data.val_docs=10"]


def test_config_is_resolved_once_into_the_stage_settings(tmp_path) -> None:
    cfg = load_config(None, [*SMALL, f"data.cache_dir={tmp_path}", "data.num_tokens=500",
                             "data.tokenizer_max_words=800", "data.filters=[toxicity]",
                             "data.filter_options.toxicity.max=0.0"]).data
    spec = resolve_corpus(cfg)
    assert spec.cache_root == tmp_path and spec.source.kind == "synthetic" and not spec.source.paths
    assert spec.source_key == source_key(cfg) == spec.source.fingerprint()
    assert list(spec.source.documents()) == list(doc_factory(cfg)()) == list(synthetic_corpus(120, 0))
    assert [d.text for d in record_factory(cfg)()] == list(synthetic_corpus(120, 0))
    assert spec.tokenizer.path is None and spec.tokenizer.max_words == 500  # min(words, tokens)
    assert [f.name for f in spec.filters] == ["toxicity"] and spec.rewrite.transform is None
    # A bad filter setting fails while resolving, before any stage reads a document.
    bad = load_config(None, ["data.filters=[toxicity]", "data.filter_options.age.cutoff=2016"]).data
    with pytest.raises(TLMError, match="not in data.filters"):
        resolve_corpus(bad)


def test_stages_run_alone_and_reuse_their_caches(tmp_path) -> None:
    spec = resolve_corpus(load_config(None, [*SMALL, f"data.cache_dir={tmp_path}"]).data)
    logs: list[str] = []
    planned = plan_documents(spec, logs.append)
    assert planned.plan.num_train == 110 and planned.plan.num_val == 10
    assert (tmp_path / "plans" / f"{planned.key}.npz").is_file() and len(logs) == 1
    again = plan_documents(spec, logs.append)
    assert again.key == planned.key and again.plan == planned.plan and len(logs) == 1  # cached
    assert filter_documents(spec, planned) is planned  # no filters configured

    docs = select_documents(spec, planned)
    everything = list(synthetic_corpus(120, 0))
    assert list(docs.train()) == [everything[i] for i in planned.plan.train_ids]
    assert list(docs.val()) == [everything[i] for i in planned.plan.val_ids]
    assert rewrite_documents(spec, docs) is docs  # no rewrite configured
    upper = replace(spec, rewrite=RewriteSpec(lambda b: [t.upper() for t in b], "upper", ("[U]",)))
    rewritten = rewrite_documents(upper, docs)
    assert list(rewritten.train()) == [t.upper() for t in docs.train()]
    assert list(rewritten.val()) == [t.upper() for t in docs.val()]
    assert rewritten.raw_train is docs.raw_train

    tok = build_tokenizer(spec, planned, docs, logs.append)
    assert tok.origin.startswith("trained:") and tok.special.vocab_size == 300
    assert build_tokenizer(spec, planned, docs).origin == "cached:" + tok.origin.split(":")[1]
    tok_u = build_tokenizer(upper, planned, rewritten)  # the rewrite joins the tokenizer key
    assert tok_u.origin != tok.origin and tok_u.tokenizer.token_to_id("[U]") is not None

    tokens = build_token_cache(spec, planned, docs, tok, progress=False, log=logs.append)
    assert not tokens.reused and tokens.directory.parent == tmp_path / "tokens"
    assert len(tokens.train) == 110 and len(tokens.val) == 10
    assert build_token_cache(spec, planned, docs, tok, progress=False).reused
    # prepare_corpus is these stages in a row: it finds everything they cached.
    whole = prepare_corpus(load_config(None, [*SMALL, f"data.cache_dir={tmp_path}"]).data,
                           progress=False, log=lambda _: None)
    assert whole.info["cache_dir"] == str(tokens.directory) and whole.info["cache_reused"]
    np.testing.assert_array_equal(np.asarray(whole.train.tokens), np.asarray(tokens.train.tokens))
