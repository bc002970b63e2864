"""Thinking-augmented pretraining: sample layout, mixing ratio, generators, caching."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tlm_jax.config import DataConfig, ObjectiveConfig
from tlm_jax.data.corpus import prepare_corpus
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.errors import TLMError
from tlm_jax.objectives import build_objectives, document_hooks
from tlm_jax.objectives.thinking import (
    THINK_CLOSE,
    THINK_OPEN,
    FileGenerator,
    TemplateGenerator,
    augment,
    doc_sha1,
    get_generator,
)

SPECIAL = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=100)
DOC = ("Jarred Shaw is an American basketball player for Trouville. In 2015 he was selected by "
       "the Santa Cruz Warriors. He signed for Dorados de Chihuahua in 2019.")


def _obj(**options):
    cfg = ObjectiveConfig(names=["thinking"], options={"thinking": options})
    return build_objectives(cfg, SPECIAL, 64)[0][0]


def test_sample_is_document_then_thinking() -> None:
    out = augment(DOC, "some analysis")
    assert out == f"{DOC} {THINK_OPEN} some analysis {THINK_CLOSE}"
    assert augment(DOC, None) == DOC and augment(DOC, "  ") == DOC  # empty -> plain
    assert augment("a b c d", "t", max_doc_words=2) == f"a b {THINK_OPEN} t {THINK_CLOSE}"


def test_template_generator_is_deterministic_and_about_the_subject() -> None:
    g = TemplateGenerator()
    t1, t2 = g.generate([DOC])[0], g.generate([DOC])[0]
    assert t1 == t2 and "Jarred Shaw" in t1 and "2015" in t1 and "2019" in t1
    assert "Santa Cruz Warriors" in t1
    assert g.generate([""]) == [None]


def test_mixing_ratio_and_determinism() -> None:
    docs = [f"Document number {i} about Topic{i}. It has two sentences." for i in range(2000)]
    obj = _obj(ratio=0.3)
    out = obj.prepare_documents(docs)
    aug = np.asarray([THINK_OPEN in o for o in out])
    assert abs(aug.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 2000)
    assert all(o.startswith(d) for o, d in zip(out, docs, strict=True))  # doc first
    assert out == obj.prepare_documents(docs)  # deterministic
    assert not any(THINK_OPEN in o for o in _obj(ratio=0.0).prepare_documents(docs[:50]))
    assert all(THINK_OPEN in o for o in _obj(ratio=1.0).prepare_documents(docs[:50]))
    assert _obj(ratio=0.3, seed=1).prepare_documents(docs) != out


def test_file_generator_looks_up_by_sha1(tmp_path) -> None:
    f = tmp_path / "traj.jsonl"
    f.write_text(json.dumps({"sha1": doc_sha1(DOC), "thinking": "precomputed"}) + "\n"
                 + json.dumps({"text": "other doc", "thinking": "t2"}) + "\n")
    g = get_generator(f"file:{f}")
    assert g.generate([DOC, "other doc", "missing"]) == ["precomputed", "t2", None]
    assert isinstance(g, FileGenerator) and g.fingerprint().startswith("file:")
    obj = _obj(generator=f"file:{f}", ratio=1.0)
    assert obj.prepare_documents([DOC, "missing"]) == [augment(DOC, "precomputed"), "missing"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(TLMError, match="line 1"):
        get_generator(f"file:{bad}")


def test_augmented_corpus_is_tokenized_and_cached(tmp_path) -> None:
    docs = tmp_path / "docs.txt"
    docs.write_text("\n\n".join(f"{DOC} Number {i}." for i in range(40)) + "\n")
    cfg = DataConfig(source="text", paths=[str(docs)], vocab_size=300, max_len=128,
                     cache_dir=str(tmp_path / "cache"), val_docs=2)
    hooks = document_hooks(ObjectiveConfig(names=["thinking"],
                                           options={"thinking": {"ratio": 0.5}}))
    assert hooks.extra_special == (THINK_OPEN, THINK_CLOSE)
    corpus = prepare_corpus(cfg, progress=False, log=lambda _: None, hooks=hooks)
    open_id = corpus.tokenizer.token_to_id(THINK_OPEN)
    close_id = corpus.tokenizer.token_to_id(THINK_CLOSE)
    with_think = [np.asarray(corpus.train.doc(i)) for i in range(len(corpus.train))]
    n_aug = sum(int((d == open_id).any()) for d in with_think)
    assert 0 < n_aug < len(with_think)
    for d in with_think:
        if (d == open_id).any():  # exactly one trajectory, closed, after the document
            assert (d == open_id).sum() == 1 and d[-1] == close_id and np.argmax(d == open_id) > 5
    again = prepare_corpus(cfg, progress=False, log=lambda _: None, hooks=hooks)
    assert again.info["cache_reused"]
