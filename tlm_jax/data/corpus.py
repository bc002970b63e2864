"""From a :class:`~tlm_jax.config.DataConfig` to a tokenizer and cached token arrays.

Three things are cached under the cache directory, each keyed by a hash of
everything it depends on, so a second run with the same settings does no work:

1. the subset plan (which documents, which are validation) -- source + subset;
2. the trained tokenizer -- plan + vocabulary settings;
3. the token arrays -- plan + tokenizer hash + token budget.
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
from tlm_jax.data.sources import iter_documents, iter_records, source_fingerprint
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


def doc_factory(cfg: DataConfig) -> Callable[[], Iterator[str]]:
    """A function returning a fresh iterator over the configured source's documents."""
    if cfg.source == "synthetic":
        return lambda: synthetic_corpus(cfg.synthetic_docs, cfg.seed)
    paths = [expand_path(p) for p in cfg.paths]
    kwargs = _source_kwargs(cfg)
    return lambda: iter_documents(cfg.source, paths, **kwargs)


def record_factory(cfg: DataConfig) -> Callable[[], Iterator[filters_lib.Doc]]:
    """Like :func:`doc_factory`, with each document's source metadata (JSONL/Pile fields)."""
    if cfg.source == "synthetic":
        return lambda: (filters_lib.Doc(t) for t in synthetic_corpus(cfg.synthetic_docs, cfg.seed))
    paths = [expand_path(p) for p in cfg.paths]
    kwargs = _source_kwargs(cfg)
    return lambda: (filters_lib.Doc(t, m) for t, m in iter_records(cfg.source, paths, **kwargs))


def _filter_plan(cfg: DataConfig, root: Path, plan: SubsetPlan, plan_key: str,
                 log: Callable[[str], None]) -> tuple[SubsetPlan, str, list[dict[str, Any]]]:
    """Apply ``cfg.filters`` to the plan's training documents (scores cached per scorer).

    Validation documents are left as planned, so runs filtered differently are
    validated on the same text.
    """
    specs = filters_lib.parse_filters(list(cfg.filters), dict(cfg.filter_options or {}))
    if not specs:
        return plan, plan_key, []
    scorers = {s.name: filters_lib.get_scorer(s.scorer, **s.options) for s in specs}
    prints = {name: sc.fingerprint() for name, sc in scorers.items()}
    paths = {name: root / "scores" / f"{_hash({'plan': plan_key, 'scorer': fp})}.npy"
             for name, fp in prints.items()}
    scores = {name: np.load(p) for name, p in paths.items() if p.is_file()}
    todo = [name for name in scorers if name not in scores]
    if todo:
        t0 = time.perf_counter()
        parts: dict[str, list[np.ndarray]] = {name: [] for name in todo}
        buf: list[filters_lib.Doc] = []

        def flush() -> None:
            for name in todo:
                parts[name].append(np.asarray(scorers[name].score(buf), np.float64))
            buf.clear()

        for doc in iter_selected(record_factory(cfg), plan.train_ids):  # type: ignore[arg-type]
            buf.append(doc)  # type: ignore[arg-type]
            if len(buf) >= 512:
                flush()
        if buf:
            flush()
        for name in todo:
            s = np.concatenate(parts[name]) if parts[name] else np.zeros(0)
            if len(s) != plan.num_train:
                raise TLMError(f"filter {name}: scorer returned {len(s)} scores for "
                               f"{plan.num_train} documents", "return one score per document")
            paths[name].parent.mkdir(parents=True, exist_ok=True)
            tmp = paths[name].with_suffix(".tmp.npy")
            np.save(tmp, s)
            tmp.replace(paths[name])
            scores[name] = s
        log(f"filters: scored {plan.num_train} documents with {', '.join(todo)} "
            f"({time.perf_counter() - t0:.1f}s)")
    keep, info = filters_lib.apply_filters(specs, scores)
    for row in info:
        log(f"filter {row['filter']} ({row['rule']}): kept {row['kept']:,} / dropped "
            f"{row['dropped']:,} of {row['input']:,} (alone it drops {row['dropped_alone']:,})")
    if not keep.any():
        raise TLMError("the curation filters dropped every training document",
                       "loosen the thresholds in data.filter_options")
    key = _hash({"plan": plan_key, "filters": [s.key(prints[s.name]) for s in specs]})
    return SubsetPlan(plan.train_ids[keep], plan.val_ids, plan.total_docs), key, info


def _source_kwargs(cfg: DataConfig) -> dict[str, Any]:
    return dict(text_field=cfg.text_field, domains=list(cfg.domains) or None,
                tfds_name=cfg.tfds_name or None, tfds_split=cfg.tfds_split,
                tfds_data_dir=cfg.tfds_data_dir or None)


def source_key(cfg: DataConfig) -> str:
    """Fingerprint of the source content."""
    if cfg.source == "synthetic":
        return _hash({"synthetic": cfg.synthetic_docs, "seed": cfg.seed, "v": 1})
    return source_fingerprint(cfg.source, [expand_path(p) for p in cfg.paths],
                              **_source_kwargs(cfg))


def _plan(cfg: DataConfig, root: Path, src_key: str, log: Callable[[str], None]
          ) -> tuple[SubsetPlan, str]:
    key = _hash({"src": src_key, "subset": cfg.subset, "n": cfg.num_docs, "seed": cfg.seed,
                 "val_fraction": cfg.val_fraction, "val_docs": cfg.val_docs})
    path = root / "plans" / f"{key}.npz"
    if path.is_file():
        z = np.load(path)
        return SubsetPlan(z["train_ids"], z["val_ids"], int(z["total_docs"])), key
    t0 = time.perf_counter()
    plan = plan_subset(doc_factory(cfg), mode=cfg.subset, num_docs=cfg.num_docs or None,
                       seed=cfg.seed, val_fraction=0.0 if cfg.val_docs else cfg.val_fraction,
                       val_docs=cfg.val_docs or None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, train_ids=plan.train_ids, val_ids=plan.val_ids, total_docs=plan.total_docs)
    tmp.replace(path)
    log(f"subset: {len(plan.train_ids)} train / {len(plan.val_ids)} val documents of "
        f"{plan.total_docs} ({time.perf_counter() - t0:.1f}s)")
    return plan, key


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


def _tokenizer(cfg: DataConfig, root: Path, plan_key: str, train_docs: Callable[[], Iterator[str]],
               log: Callable[[str], None], extra: tuple[str, ...] = (),
               doc_key: str = "") -> tuple[Tokenizer, str]:
    if cfg.tokenizer != "train":
        tok = load_tokenizer(expand_path(cfg.tokenizer), lowercase=cfg.lowercase)
        missing = [t for t in extra if tok.token_to_id(t) is None]
        if missing:
            tok.add_special_tokens(missing)
        return tok, "loaded:" + str(cfg.tokenizer)
    budget = cfg.tokenizer_max_words
    if cfg.num_tokens:
        budget = min(budget, cfg.num_tokens) if budget else cfg.num_tokens
    key_parts = {"plan": plan_key, "vocab": cfg.vocab_size, "lower": cfg.lowercase,
                 "words": budget, "v": 1}
    if extra or doc_key:  # objective hooks (control tokens, rewritten documents)
        key_parts.update(extra=list(extra), docs=doc_key)
    key = _hash(key_parts)
    path = root / "tokenizers" / f"{key}.json"
    if path.is_file():
        return load_tokenizer(path), "cached:" + key
    t0 = time.perf_counter()
    docs = train_docs()
    tok = train_wordpiece(take_words(docs, budget) if budget else docs, cfg.vocab_size,
                          lowercase=cfg.lowercase, extra_special=extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tok.save(str(tmp))
    tmp.replace(path)
    log(f"tokenizer: trained WordPiece, {tok.get_vocab_size()} tokens "
        f"({time.perf_counter() - t0:.1f}s)")
    return tok, "trained:" + key


def prepare_corpus(cfg: DataConfig, *, progress: bool = True,
                   log: Callable[[str], None] = print, hooks: Any = None) -> Corpus:
    """Subset -> tokenizer -> token cache, each reused from the cache when possible.

    ``hooks`` (a :class:`~tlm_jax.objectives.base.DocumentHooks`) rewrites documents
    before tokenization and adds special tokens; its key joins the cache keys.
    """
    transform = getattr(hooks, "transform", None)
    doc_key = getattr(hooks, "key", "") or ""
    extra = tuple(getattr(hooks, "extra_special", ()) or ())
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_lib.default_cache_dir()
    t0 = time.perf_counter()
    src_key = source_key(cfg)
    plan, plan_key = _plan(cfg, root, src_key, log)
    plan, plan_key, filter_info = _filter_plan(cfg, root, plan, plan_key, log)
    factory = doc_factory(cfg)
    train_docs = lambda: iter_selected(factory, plan.train_ids)  # noqa: E731
    val_docs = lambda: iter_selected(factory, plan.val_ids)  # noqa: E731
    raw_train_docs = train_docs
    if transform is not None:
        train_docs = lambda: _rewritten(raw_train_docs(), transform)  # noqa: E731
        val_docs = lambda: _rewritten(iter_selected(factory, plan.val_ids), transform)  # noqa: E731
    tok, tok_origin = _tokenizer(cfg, root, plan_key, train_docs, log, extra, doc_key)
    special = special_tokens(tok, extra)
    tok_hash = tokenizer_hash(tok)
    token_key = {"plan": plan_key, "tok": tok_hash, "budget": cfg.num_tokens,
                 "v": cache_lib.CACHE_VERSION}
    if doc_key:
        token_key["docs"] = doc_key
    key = _hash(token_key)
    arrays, meta = cache_lib.build_or_load(
        root / "tokens", key, tok,
        {"train": (train_docs, len(plan.train_ids), cfg.num_tokens),
         "val": (val_docs, len(plan.val_ids), 0)},
        info={"source_key": src_key, "plan_key": plan_key, "tokenizer_hash": tok_hash},
        progress=progress, log=log)
    seconds = time.perf_counter() - t0
    info = {"cache_dir": str(root / "tokens" / key), "cache_reused": meta["reused"],
            "prepare_seconds": round(seconds, 2), "build_seconds": meta.get("build_seconds"),
            "tokenizer": tok_origin, "tokenizer_hash": tok_hash, "vocab_size": special.vocab_size,
            "train_docs": len(arrays["train"]), "train_tokens": arrays["train"].num_tokens,
            "val_docs": len(arrays["val"]), "val_tokens": arrays["val"].num_tokens,
            "total_docs": plan.total_docs}
    if filter_info:
        info["filters"] = filter_info
    log(f"data: {info['train_docs']} train docs / {info['train_tokens']:,} tokens, "
        f"{info['val_docs']} val docs; token cache {'reused' if meta['reused'] else 'built'} "
        f"in {seconds:.1f}s")
    return Corpus(tok, special, arrays["train"], arrays["val"], info, documents=raw_train_docs)
