"""Deterministic data artefacts: the trained tokenizer and the token cache are the same bytes in
any process, and runs sharing a cold cache build each entry once (real processes, real text)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

from conftest import REPO, cli_env
from tokenizers import Tokenizer, models, trainers

from tlm_jax.data.sources import iter_documents
from tlm_jax.data.tokenizer import (
    SPECIAL_TOKENS,
    _bert_pipeline,
    canonical_wordpiece,
    tokenizer_hash,
    train_wordpiece,
)

# 300 Wikipedia articles and a 2,000-token vocabulary: small enough for seconds, and the
# merges near the budget are full of ties (HF's trainer alone gives other ids in every process).
ARGS = ["data.source=wikiextractor", "data.paths=[$TLM_DATA_DIR/wikipedia_en_excerpt/*.gz]",
        "data.subset=first", "data.num_docs=300", "data.val_docs=20", "data.vocab_size=2000"]

# One corpus preparation in a fresh process; ``argv[1]``: a JSON list of overrides, ``argv[2]``
# (optional): a barrier directory, so that several such processes start the stages together.
PREPARE = """
import json, sys, time
from pathlib import Path
from tlm_jax.config import load_config
from tlm_jax.data.corpus import prepare_corpus
cfg = load_config(None, json.loads(sys.argv[1])).data
if len(sys.argv) > 2:
    barrier, n = Path(sys.argv[2]), int(sys.argv[3])
    (barrier / str(time.monotonic_ns())).touch()
    while len(list(barrier.iterdir())) < n:
        time.sleep(0.01)
corpus = prepare_corpus(cfg, progress=False, log=lambda m: print("LOG", m, flush=True))
print("INFO", json.dumps(corpus.info))
"""


def _prepare(overrides: list[str], *barrier: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PREPARE, json.dumps(overrides), *barrier],
                            cwd=REPO, env=cli_env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(p: subprocess.Popen) -> tuple[list[str], dict]:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
    lines = out.splitlines()
    info = json.loads(next(x for x in lines if x.startswith("INFO "))[5:])
    return [x[4:] for x in lines if x.startswith("LOG ")], info


def _files(root: Path) -> dict[str, bytes]:
    """Every file of the tokenizer and token caches under ``root`` (timings left out)."""
    return {str(p.relative_to(root)): p.read_bytes()
            for sub in ("tokenizers", "tokens") for p in sorted((root / sub).rglob("*"))
            if p.is_file() and p.suffix != ".lock" and p.name != "build.json"}


def test_tokenizer_and_token_cache_are_the_same_bytes_in_fresh_processes(tmp_path, data_dir) -> None:
    # One cold cache after the other, each in its own process (its own hash-map seeds).
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        _finish(_prepare([*ARGS, f"data.cache_dir={root}"]))
    first, second = (_files(r) for r in roots)
    tokenizers = [n for n in first if n.startswith("tokenizers/")]
    assert len(tokenizers) == 1 and first[tokenizers[0]] == second.get(tokenizers[0])
    names = sorted(first)
    assert names == sorted(second)  # the token cache's key holds the tokenizer's hash
    assert {Path(n).name for n in names if n.startswith("tokens/")} == {
        "meta.json", "train.bin", "train.idx.npy", "val.bin", "val.idx.npy"}
    for name in names:
        assert first[name] == second[name], name


def test_concurrent_runs_build_each_entry_once(tmp_path, data_dir) -> None:
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    barrier.mkdir()
    args = [*ARGS, f"data.cache_dir={cache}", "data.filters=[toxicity]",
            "data.filter_options.toxicity.max=0.01"]
    procs = [_prepare(args, str(barrier), "3") for _ in range(3)]
    runs = [_finish(p) for p in procs]
    logs = [m for log, _ in runs for m in log]
    # Each stage was built by one process; the others waited for its lock and reused the entry.
    for built in ("subset:", "filters: scored", "tokenizer: trained"):
        assert sum(m.startswith(built) for m in logs) == 1, (built, logs)
    infos = [info for _, info in runs]
    assert sorted(i["cache_reused"] for i in infos) == [False, True, True]
    assert sorted(i["tokenizer"].split(":")[0] for i in infos) == ["cached", "cached", "trained"]
    # All three train on the published artefacts: one tokenizer (the one in the cache), one cache.
    assert len({i["tokenizer_hash"] for i in infos}) == 1
    assert len({i["cache_dir"] for i in infos}) == 1
    published = list((cache / "tokenizers").glob("*.json"))
    assert len(published) == 1
    assert tokenizer_hash(Tokenizer.from_file(str(published[0]))) == infos[0]["tokenizer_hash"]
    # Nothing half-built is left behind: only the entries and their lock files.
    leftovers = [p.name for p in cache.rglob("*") if ".tmp" in p.name or p.name.startswith("wordpiece-")]
    assert not leftovers


def _wiki(data_dir: Path, n: int, skip: int = 0) -> list[str]:
    paths = sorted(str(p) for p in (data_dir / "wikipedia_en_excerpt").glob("*.gz"))
    return list(islice(iter_documents("wikiextractor", paths), skip, skip + n))


def test_canonical_numbering_encodes_like_the_trainer(data_dir) -> None:
    docs, held_out = _wiki(data_dir, 200), _wiki(data_dir, 50, skip=200)
    tok = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100)),
                         True)
    tok.train_from_iterator(docs, trainers.WordPieceTrainer(
        vocab_size=1500, special_tokens=list(SPECIAL_TOKENS), min_frequency=2, show_progress=False,
        continuing_subword_prefix="##"))
    canon = canonical_wordpiece(tok)
    vocab = canon.get_vocab()
    assert set(vocab) == set(tok.get_vocab())  # the same set, renumbered
    order = sorted(vocab, key=vocab.__getitem__)
    assert order[:5] == list(SPECIAL_TOKENS)
    rest = order[5:]
    assert rest == sorted(rest, key=lambda t: (t.startswith("##"), len(t), t))
    before = tok.encode_batch(held_out, add_special_tokens=False)
    after = canon.encode_batch(held_out, add_special_tokens=False)
    assert [e.tokens for e in before] == [e.tokens for e in after]
    assert sum(len(e.tokens) for e in after) > 5000
    assert any(a.ids != b.ids for a, b in zip(before, after, strict=True))


def test_train_wordpiece_keeps_the_budget_and_only_the_specials_as_added_tokens(tmp_path, data_dir) -> None:
    docs = _wiki(data_dir, 200)
    t0 = time.perf_counter()
    tok = train_wordpiece(iter(docs), 1500, extra_special=("[X]",), workdir=tmp_path)
    assert time.perf_counter() - t0 < 60
    assert tok.get_vocab_size() == 1500
    assert [t.content for t in tok.get_added_tokens_decoder().values()] == [*SPECIAL_TOKENS, "[X]"]
    assert [tok.token_to_id(t) for t in (*SPECIAL_TOKENS, "[X]")] == list(range(6))
    assert not list(tmp_path.iterdir())  # the spooled text is gone
    # The same text in another order of documents is the same word counts: the same tokenizer.
    again = train_wordpiece(reversed(docs), 1500, extra_special=("[X]",))
    assert again.to_str() == tok.to_str()
    # A continuation character is a token exactly when the trainer would make it: ``##x`` for
    # letters that follow another inside a word, never for punctuation.
    vocab = tok.get_vocab()
    assert "##e" in vocab and "##," not in vocab and "##(" not in vocab
