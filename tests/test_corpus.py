"""Corpus preparation: subset -> tokenizer -> token cache, reused on the second run."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tlm_jax.config import load_config
from tlm_jax.data.corpus import prepare_corpus
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
