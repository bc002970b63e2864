"""Conditional training: scorer, control-token rule, document hooks, tokenizer, CLM targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlm_jax.config import DataConfig, ObjectiveConfig
from tlm_jax.data.corpus import prepare_corpus
from tlm_jax.errors import TLMError
from tlm_jax.objectives import build_objectives, document_hooks
from tlm_jax.objectives.conditional import (
    BAD,
    GOOD,
    annotate,
    control_token,
    segments,
    strip_control,
)
from tlm_jax.objectives.scorers import LexiconScorer, get_scorer

DOC = ("The club was founded in 1901. Two players were killed in a bus crash in 1950.\n"
       "The stadium holds 20,000 people. It was bombed during the war!")


def test_lexicon_scorer_is_the_fraction_of_lexicon_words() -> None:
    s = LexiconScorer()
    assert s.score("The cat sat on the mat.") == 0.0
    assert s.score("They killed him") == pytest.approx(1 / 3)
    assert s.hits("War, bombs and a MURDER.") == ["war", "bombs", "murder"]
    assert s.score("") == 0.0
    custom = LexiconScorer(lexicon=["mat"])
    assert custom.score("the mat") == 0.5 and custom.fingerprint() != s.fingerprint()


def test_scorers_are_pluggable_by_import_path(tmp_path) -> None:
    s = get_scorer("tlm_jax.objectives.scorers:LexiconScorer", lexicon=["foo"])
    assert s.score("foo bar") == 0.5
    f = tmp_path / "lex.txt"
    f.write_text("# comment\nbar\n")
    assert get_scorer("lexicon", lexicon_file=str(f)).score("foo bar") == 0.5
    with pytest.raises(TLMError, match="unknown scorer"):
        get_scorer("nope")


def test_good_iff_score_at_most_threshold() -> None:
    assert control_token(0.0, 0.0) == GOOD  # s == t is good
    assert control_token(0.01, 0.0) == BAD
    assert control_token(0.2, 0.25) == GOOD


def test_annotation_puts_one_token_before_each_segment_and_strips_back() -> None:
    segs = segments(DOC)
    assert len(segs) == 4
    out, toks = annotate(DOC, LexiconScorer(), 0.0)
    assert toks == [GOOD, BAD, GOOD, BAD]
    assert out.count(GOOD) + out.count(BAD) == len(segs)
    assert out.startswith(GOOD + " The club")
    assert strip_control(out) == " ".join(segs)
    # drop = 1 reproduces the plain (MLE) data
    plain, toks1 = annotate(DOC, LexiconScorer(), 0.0, drop=1.0)
    assert plain == " ".join(segs) and toks1 == [""] * 4
    # dropping is a deterministic function of the segment
    a, _ = annotate(DOC, LexiconScorer(), 0.0, drop=0.5, seed=3)
    b, _ = annotate(DOC, LexiconScorer(), 0.0, drop=0.5, seed=3)
    assert a == b


def test_document_hooks_expose_rewrite_key_and_control_tokens() -> None:
    hooks = document_hooks(ObjectiveConfig(names=["conditional"]))
    assert hooks.extra_special == (GOOD, BAD)
    assert hooks.transform([DOC])[0] == annotate(DOC, LexiconScorer(), 0.0)[0]
    assert "lexicon:" in hooks.key
    other = document_hooks(ObjectiveConfig(names=["conditional"],
                                           options={"conditional": {"threshold": 0.5}}))
    assert other.key != hooks.key
    assert document_hooks(ObjectiveConfig(names=["mlm"])).transform is None


def test_corpus_gets_control_tokens_as_single_special_ids(tmp_path) -> None:
    docs = tmp_path / "docs.txt"
    docs.write_text("\n\n".join([DOC] * 30) + "\n")
    cfg = DataConfig(source="text", paths=[str(docs)], vocab_size=300, max_len=64,
                     cache_dir=str(tmp_path / "cache"), val_docs=2)
    hooks = document_hooks(ObjectiveConfig(names=["conditional"]))
    corpus = prepare_corpus(cfg, progress=False, log=lambda _: None, hooks=hooks)
    good, bad = corpus.tokenizer.token_to_id(GOOD), corpus.tokenizer.token_to_id(BAD)
    assert corpus.special.extra == (good, bad)
    toks = np.asarray(corpus.train.doc(0))
    assert toks[0] == good and (toks == good).sum() == 2 and (toks == bad).sum() == 2
    # the rewrite is part of the cache key; the raw documents stay available for setup hooks
    plain = prepare_corpus(cfg, progress=False, log=lambda _: None)
    assert plain.info["cache_dir"] != corpus.info["cache_dir"]
    assert next(corpus.documents()).startswith("The club")
    # cached on the second call
    again = prepare_corpus(cfg, progress=False, log=lambda _: None, hooks=hooks)
    assert again.info["cache_reused"]

    # CLM on the augmented stream: control tokens are targets too (not masked)
    obj = build_objectives(ObjectiveConfig(names=["conditional"]), corpus.special, 64)[0][0]
    ids = np.full((1, 64), corpus.special.pad, np.int32)
    ids[0, 0] = corpus.special.cls
    ids[0, 1:1 + len(toks)] = toks
    _, t = obj.transform({"input_ids": jnp.asarray(ids), "index": jnp.arange(1)},
                         jax.random.PRNGKey(0))
    labels, w = np.asarray(t["labels"])[0], np.asarray(t["weights"])[0]
    assert labels[0] == good and w[0] == 1.0
    assert w[labels == bad].all()
