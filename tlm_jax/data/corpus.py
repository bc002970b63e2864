"""From a :class:`~tlm_jax.config.DataConfig` to a tokenizer and cached token arrays.

:func:`prepare_corpus` resolves the config once (:func:`resolve_corpus`, into a
:class:`CorpusSpec`) and then runs the stages in order, each a function of the
spec and the previous stage's output:

1. source -- what to read and its fingerprint (:class:`SourceSpec`, resolved up front);
2. :func:`plan_documents` -- which documents: the subset plan;
3. :func:`filter_documents` -- the curation filters on the planned training documents;
4. :func:`select_documents` -> :func:`rewrite_documents` -- the planned documents as
   streams, rewritten by the objectives' document hooks;
5. :func:`build_tokenizer` -- loaded from a file, or trained on the training stream;
6. :func:`build_token_cache` -- the token arrays of both splits.

Four things are cached under the cache directory, each keyed by a hash of
everything it depends on, so a second run with the same settings does no work:

1. the subset plan (which documents, which are validation) -- source + subset;
2. the filter scores (one array per scorer) -- plan + scorer fingerprint;
3. the trained tokenizer -- plan (+ filters) + vocabulary settings;
4. the token arrays -- plan (+ filters) + tokenizer hash + token budget.

Each entry is a pure function of its key (the trained tokenizer too: same bytes on any
machine, :func:`~tlm_jax.data.tokenizer.train_wordpiece`), and concurrent runs sharing a cold
cache build each entry once: the first takes the entry's lock, the others wait and reuse
what it published (:mod:`tlm_jax.data.locks`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from tlm_jax.config import DataConfig, expand_path
from tlm_jax.data import cache as cache_lib
from tlm_jax.data import filters as filters_lib
from tlm_jax.data import locks
from tlm_jax.data.sources import iter_documents, iter_records, source_fingerprint, source_options
from tlm_jax.data.subset import SubsetPlan, iter_selected, plan_subset, take_words
from tlm_jax.data.synthetic import synthetic_corpus
from tlm_jax.data.tokenizer import (
    SpecialTokens,
    load_tokenizer,
    special_tokens,
    tokenizer_hash,
    train_wordpiece,
)
from tlm_jax.errors import TLMError

#: A function returning a fresh iterator over documents (one stream per call).
DocFactory = Callable[[], Iterator[str]]


@dataclass
class Corpus:
    """A prepared pretraining corpus."""

    tokenizer: Tokenizer
    special: SpecialTokens
    train: cache_lib.TokenArrays
    val: cache_lib.TokenArrays
    info: dict[str, Any] = field(default_factory=dict)
    # Raw (not rewritten) training documents, for objectives' host-side setup (taggers).
    documents: Callable[[], Iterator[str]] | None = None


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the resolved config


@dataclass(frozen=True)
class SourceSpec:
    """What to read: the source kind, its expanded paths and its reading options."""

    kind: str
    paths: tuple[str, ...] = ()  # ``$VARS`` and ``~`` expanded; none for "synthetic"
    options: dict[str, Any] = field(default_factory=dict)  # iter_documents keywords
    synthetic_docs: int = 0
    seed: int = 0

    def documents(self) -> Iterator[str]:
        """A fresh iterator over the source's documents."""
        if self.kind == "synthetic":
            return synthetic_corpus(self.synthetic_docs, self.seed)
        return iter_documents(self.kind, list(self.paths), **self.options)

    def records(self) -> Iterator[filters_lib.Doc]:
        """Like :meth:`documents`, each with its source metadata (JSONL/Pile fields)."""
        if self.kind == "synthetic":
            return (filters_lib.Doc(t) for t in synthetic_corpus(self.synthetic_docs, self.seed))
        return (filters_lib.Doc(t, m)
                for t, m in iter_records(self.kind, list(self.paths), **self.options))

    def fingerprint(self) -> str:
        """Fingerprint of the source content (the root of every cache key)."""
        if self.kind == "synthetic":
            return _hash({"synthetic": self.synthetic_docs, "seed": self.seed, "v": 1})
        return source_fingerprint(self.kind, list(self.paths), **self.options)


@dataclass(frozen=True)
class SubsetSpec:
    """Which documents, as configured: subset mode and size, seed, validation split."""

    mode: str  # all | first | random
    num_docs: int  # 0 with mode "all"
    seed: int
    val_fraction: float
    val_docs: int  # 0 = use val_fraction


@dataclass(frozen=True)
class RewriteSpec:
    """The objectives' batched document rewrite, the key naming it, and their extra tokens."""

    transform: Callable[[list[str]], list[str]] | None = None
    key: str = ""
    extra_special: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenizerSpec:
    """Which tokenizer: a file to load, or a WordPiece vocabulary to train."""

    name: str  # "train", or the configured tokenizer path
    path: str | None  # the file to load, expanded; None = train one
    vocab_size: int
    lowercase: bool
    max_words: int  # words of training text a trained vocabulary sees (0 = all)


@dataclass(frozen=True)
class CorpusSpec:
    """A :class:`~tlm_jax.config.DataConfig` resolved once: every stage's settings, in order."""

    source: SourceSpec
    source_key: str  # the source's fingerprint: the root of every cache key
    subset: SubsetSpec
    filters: tuple[filters_lib.FilterSpec, ...]
    rewrite: RewriteSpec
    tokenizer: TokenizerSpec
    num_tokens: int  # training-token budget (0 = every planned document)
    cache_root: Path


def resolve_source(cfg: DataConfig) -> SourceSpec:
    """The source part of ``cfg``: kind, expanded paths and reading options."""
    if cfg.source == "synthetic":
        return SourceSpec("synthetic", synthetic_docs=cfg.synthetic_docs, seed=cfg.seed)
    return SourceSpec(cfg.source, tuple(expand_path(p) for p in cfg.paths), source_options(cfg))


def resolve_corpus(cfg: DataConfig, hooks: Any = None) -> CorpusSpec:
    """Resolve ``cfg`` (and the objectives' document ``hooks``) into a :class:`CorpusSpec`.

    Expands the paths, fingerprints the source and validates the filters, so a bad
    data config fails here, before any stage runs. ``hooks`` is a
    :class:`~tlm_jax.objectives.base.DocumentHooks` or ``None``.
    """
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_lib.default_cache_dir()
    source = resolve_source(cfg)
    source_key = source.fingerprint()
    subset = SubsetSpec(cfg.subset, cfg.num_docs, cfg.seed, cfg.val_fraction, cfg.val_docs)
    filters = tuple(filters_lib.parse_filters(list(cfg.filters), dict(cfg.filter_options or {})))
    rewrite = RewriteSpec(getattr(hooks, "transform", None), getattr(hooks, "key", "") or "",
                          tuple(getattr(hooks, "extra_special", ()) or ()))
    max_words = cfg.tokenizer_max_words
    if cfg.num_tokens:
        max_words = min(max_words, cfg.num_tokens) if max_words else cfg.num_tokens
    path = None if cfg.tokenizer == "train" else expand_path(cfg.tokenizer)
    tokenizer = TokenizerSpec(str(cfg.tokenizer), path, cfg.vocab_size, cfg.lowercase, max_words)
    return CorpusSpec(source, source_key, subset, filters, rewrite, tokenizer, cfg.num_tokens, root)


# ----------------------------------------------------------------------------- the stages


@dataclass(frozen=True)
class PlannedDocuments:
    """Which documents to use, and the cache key naming that choice (source, subset, filters)."""

    plan: SubsetPlan
    key: str
    filters: list[dict[str, Any]] = field(default_factory=list)  # per-filter counts, if filtered


@dataclass(frozen=True)
class DocumentStreams:
    """The planned documents as streams: each a function returning a fresh iterator."""

    train: DocFactory
    val: DocFactory
    raw_train: DocFactory  # the training documents before any rewrite


@dataclass(frozen=True)
class CorpusTokenizer:
    """The corpus's tokenizer, its special-token ids, its hash and where it came from."""

    tokenizer: Tokenizer
    special: SpecialTokens
    hash: str
    origin: str  # "loaded:PATH", "cached:KEY" or "trained:KEY"


@dataclass(frozen=True)
class TokenCache:
    """The token arrays of both splits and the cache entry holding them."""

    train: cache_lib.TokenArrays
    val: cache_lib.TokenArrays
    directory: Path
    reused: bool
    build_seconds: float | None


def plan_documents(spec: CorpusSpec, log: Callable[[str], None] = print) -> PlannedDocuments:
    """Choose the training and validation documents of the source (cached under ``plans/``)."""
    s = spec.subset
    key = _hash({"src": spec.source_key, "subset": s.mode, "n": s.num_docs, "seed": s.seed,
                 "val_fraction": s.val_fraction, "val_docs": s.val_docs})
    path = spec.cache_root / "plans" / f"{key}.npz"

    def build() -> None:
        t0 = time.perf_counter()
        plan = plan_subset(spec.source.documents, mode=s.mode, num_docs=s.num_docs or None,
                           seed=s.seed, val_fraction=0.0 if s.val_docs else s.val_fraction,
                           val_docs=s.val_docs or None)
        locks.publish_file(path, lambda tmp: np.savez(tmp, train_ids=plan.train_ids,
                                                      val_ids=plan.val_ids, total_docs=plan.total_docs))
        log(f"subset: {len(plan.train_ids)} train / {len(plan.val_ids)} val documents of "
            f"{plan.total_docs} ({time.perf_counter() - t0:.1f}s)")

    with cache_lib.writing("the subset plan", spec.cache_root):
        locks.build_once(path, build, f"subset plan {key}", log)
    with np.load(path) as z:
        return PlannedDocuments(SubsetPlan(z["train_ids"], z["val_ids"], int(z["total_docs"])), key)


def filter_documents(spec: CorpusSpec, planned: PlannedDocuments,
                     log: Callable[[str], None] = print) -> PlannedDocuments:
    """Apply the configured filters to the planned training documents (scores cached per scorer).

    Validation documents are left as planned, so runs filtered differently are
    validated on the same text.
    """
    specs = spec.filters
    if not specs:
        return planned
    plan, plan_key = planned.plan, planned.key
    scorers = {s.name: filters_lib.get_scorer(s.scorer, **s.options) for s in specs}
    prints = {name: sc.fingerprint() for name, sc in scorers.items()}
    paths = {name: spec.cache_root / "scores" / f"{_hash({'plan': plan_key, 'scorer': fp})}.npy"
             for name, fp in prints.items()}
    scores = {name: np.load(p) for name, p in paths.items() if p.is_file()}
    todo = [name for name in scorers if name not in scores]
    if todo:
        with cache_lib.writing("the filter scores", spec.cache_root), \
                locks.entry_locks([paths[name] for name in todo], "filter scores", log):
            done = {name: np.load(paths[name]) for name in todo if paths[name].is_file()}
            if done:
                log(f"filters: reusing the {', '.join(done)} scores another process computed")
            scores.update(done)
            todo = [name for name in todo if name not in done]
            if todo:
                scores.update(_score_documents(spec, plan, {n: scorers[n] for n in todo},
                                               {n: paths[n] for n in todo}, log))
    keep, info = filters_lib.apply_filters(specs, scores)
    for row in info:
        log(f"filter {row['filter']} ({row['rule']}): kept {row['kept']:,} / dropped "
            f"{row['dropped']:,} of {row['input']:,} (alone it drops {row['dropped_alone']:,})")
    if not keep.any():
        raise TLMError("the curation filters dropped every training document",
                       "loosen the thresholds in data.filter_options")
    key = _hash({"plan": plan_key, "filters": [s.key(prints[s.name]) for s in specs]})
    return PlannedDocuments(SubsetPlan(plan.train_ids[keep], plan.val_ids, plan.total_docs), key,
                            info)


def _score_documents(spec: CorpusSpec, plan: SubsetPlan, scorers: dict[str, filters_lib.DocScorer],
                     paths: dict[str, Path], log: Callable[[str], None]) -> dict[str, np.ndarray]:
    """Score the planned training documents with ``scorers`` in one pass; publish each to ``paths``."""
    t0 = time.perf_counter()
    parts: dict[str, list[np.ndarray]] = {name: [] for name in scorers}
    buf: list[filters_lib.Doc] = []

    def flush() -> None:
        for name, scorer in scorers.items():
            parts[name].append(np.asarray(scorer.score(buf), np.float64))
        buf.clear()

    for doc in iter_selected(spec.source.records, plan.train_ids):  # type: ignore[arg-type]
        buf.append(doc)  # type: ignore[arg-type]
        if len(buf) >= 512:
            flush()
    if buf:
        flush()
    scores = {}
    for name in scorers:
        s = np.concatenate(parts[name]) if parts[name] else np.zeros(0)
        if len(s) != plan.num_train:
            raise TLMError(f"filter {name}: scorer returned {len(s)} scores for "
                           f"{plan.num_train} documents", "return one score per document")
        locks.publish_file(paths[name], lambda tmp, s=s: np.save(tmp, s))
        scores[name] = s
    log(f"filters: scored {plan.num_train} documents with {', '.join(scorers)} "
        f"({time.perf_counter() - t0:.1f}s)")
    return scores


def select_documents(spec: CorpusSpec, planned: PlannedDocuments) -> DocumentStreams:
    """The planned training and validation documents of the source, as streams."""
    source, plan = spec.source, planned.plan
    train = lambda: iter_selected(source.documents, plan.train_ids)  # noqa: E731
    val = lambda: iter_selected(source.documents, plan.val_ids)  # noqa: E731
    return DocumentStreams(train, val, raw_train=train)


def _rewritten(docs: Iterator[str], transform: Callable[[list[str]], list[str]],
               chunk: int = 64) -> Iterator[str]:
    """Apply a batched document rewrite (objective hooks) to a document stream."""
    buf: list[str] = []
    for d in docs:
        buf.append(d)
        if len(buf) >= chunk:
            yield from transform(buf)
            buf = []
    if buf:
        yield from transform(buf)


def rewrite_documents(spec: CorpusSpec, docs: DocumentStreams) -> DocumentStreams:
    """Both splits rewritten by the objectives' transform (``raw_train`` stays as it was)."""
    transform = spec.rewrite.transform
    if transform is None:
        return docs
    return DocumentStreams(train=lambda: _rewritten(docs.train(), transform),
                           val=lambda: _rewritten(docs.val(), transform), raw_train=docs.raw_train)


def build_tokenizer(spec: CorpusSpec, planned: PlannedDocuments, docs: DocumentStreams,
                    log: Callable[[str], None] = print) -> CorpusTokenizer:
    """Load the configured tokenizer, or train one on ``docs.train`` (cached under ``tokenizers/``)."""
    t, extra, doc_key = spec.tokenizer, spec.rewrite.extra_special, spec.rewrite.key
    if t.path is not None:
        tok = load_tokenizer(t.path, lowercase=t.lowercase)
        missing = [x for x in extra if tok.token_to_id(x) is None]
        if missing:
            tok.add_special_tokens(missing)
        return _corpus_tokenizer(tok, extra, "loaded:" + t.name)
    # v2: vocabularies are reproducible and canonically numbered (train_wordpiece); a v1 entry
    # (hash-order ids) must not be reused for new runs.
    key_parts = {"plan": planned.key, "vocab": t.vocab_size, "lower": t.lowercase,
                 "words": t.max_words, "v": 2}
    if extra or doc_key:  # objective hooks (control tokens, rewritten documents)
        key_parts.update(extra=list(extra), docs=doc_key)
    key = _hash(key_parts)
    path = spec.cache_root / "tokenizers" / f"{key}.json"

    def build() -> None:
        t0 = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)  # the spool goes there too
        stream = docs.train()
        tok = train_wordpiece(take_words(stream, t.max_words) if t.max_words else stream,
                              t.vocab_size, lowercase=t.lowercase, extra_special=extra,
                              workdir=path.parent)
        locks.publish_file(path, lambda tmp: tok.save(str(tmp)))
        log(f"tokenizer: trained WordPiece, {tok.get_vocab_size()} tokens "
            f"({time.perf_counter() - t0:.1f}s)")

    with cache_lib.writing("the tokenizer", spec.cache_root):
        built = locks.build_once(path, build, f"tokenizer {key}", log)
    # The builder too loads the published file: every run uses the very bytes in the cache.
    return _corpus_tokenizer(load_tokenizer(path), extra, ("trained:" if built else "cached:") + key)


def _corpus_tokenizer(tok: Tokenizer, extra: tuple[str, ...], origin: str) -> CorpusTokenizer:
    return CorpusTokenizer(tok, special_tokens(tok, extra), tokenizer_hash(tok), origin)


def build_token_cache(spec: CorpusSpec, planned: PlannedDocuments, docs: DocumentStreams,
                      tok: CorpusTokenizer, *, progress: bool = True,
                      log: Callable[[str], None] = print) -> TokenCache:
    """Tokenize both splits into the token cache (under ``tokens/``), or load them from it."""
    plan = planned.plan
    token_key = {"plan": planned.key, "tok": tok.hash, "budget": spec.num_tokens,
                 "v": cache_lib.CACHE_VERSION}
    if spec.rewrite.key:
        token_key["docs"] = spec.rewrite.key
    key = _hash(token_key)
    arrays, meta = cache_lib.build_or_load(
        spec.cache_root / "tokens", key, tok.tokenizer,
        {"train": (docs.train, len(plan.train_ids), spec.num_tokens),
         "val": (docs.val, len(plan.val_ids), 0)},
        info={"source_key": spec.source_key, "plan_key": planned.key, "tokenizer_hash": tok.hash},
        progress=progress, log=log)
    return TokenCache(arrays["train"], arrays["val"], spec.cache_root / "tokens" / key,
                      meta["reused"], meta.get("build_seconds"))


def _corpus(planned: PlannedDocuments, docs: DocumentStreams, tok: CorpusTokenizer,
            tokens: TokenCache, seconds: float, log: Callable[[str], None]) -> Corpus:
    """The prepared corpus, with a record of how it was made in ``info`` (and the log)."""
    info = {"cache_dir": str(tokens.directory), "cache_reused": tokens.reused,
            "prepare_seconds": round(seconds, 2), "build_seconds": tokens.build_seconds,
            "tokenizer": tok.origin, "tokenizer_hash": tok.hash, "vocab_size": tok.special.vocab_size,
            "train_docs": len(tokens.train), "train_tokens": tokens.train.num_tokens,
            "val_docs": len(tokens.val), "val_tokens": tokens.val.num_tokens,
            "total_docs": planned.plan.total_docs}
    if planned.filters:
        info["filters"] = planned.filters
    log(f"data: {info['train_docs']} train docs / {info['train_tokens']:,} tokens, "
        f"{info['val_docs']} val docs; token cache {'reused' if tokens.reused else 'built'} "
        f"in {seconds:.1f}s")
    return Corpus(tok.tokenizer, tok.special, tokens.train, tokens.val, info,
                  documents=docs.raw_train)


def prepare_corpus(cfg: DataConfig, *, progress: bool = True,
                   log: Callable[[str], None] = print, hooks: Any = None) -> Corpus:
    """Source -> subset -> filters -> rewrite -> tokenizer -> token cache, reusing the caches.

    ``hooks`` (a :class:`~tlm_jax.objectives.base.DocumentHooks`) rewrites documents
    before tokenization and adds special tokens; its key joins the cache keys.
    """
    t0 = time.perf_counter()
    spec = resolve_corpus(cfg, hooks)
    planned = plan_documents(spec, log)
    planned = filter_documents(spec, planned, log)
    docs = rewrite_documents(spec, select_documents(spec, planned))
    tok = build_tokenizer(spec, planned, docs, log)
    tokens = build_token_cache(spec, planned, docs, tok, progress=progress, log=log)
    return _corpus(planned, docs, tok, tokens, time.perf_counter() - t0, log)


# ----------------------------------------------------------------------------- single pieces


def doc_factory(cfg: DataConfig) -> Callable[[], Iterator[str]]:
    """A function returning a fresh iterator over the configured source's documents."""
    return resolve_source(cfg).documents


def record_factory(cfg: DataConfig) -> Callable[[], Iterator[filters_lib.Doc]]:
    """Like :func:`doc_factory`, with each document's source metadata (JSONL/Pile fields)."""
    return resolve_source(cfg).records


def source_key(cfg: DataConfig) -> str:
    """Fingerprint of the source content."""
    return resolve_source(cfg).fingerprint()
