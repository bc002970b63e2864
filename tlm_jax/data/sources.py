"""Streaming document sources: plain text, lines, JSONL, WikiExtractor, the Pile, TFDS, HF datasets.

Every reader streams: files are decoded line by line (gzip and zstd included),
so a corpus is never held in memory as one string. The order of documents is
deterministic (paths are expanded and sorted the same way every time), which is
what lets :mod:`tlm_jax.data.subset` address documents by their index in the
stream.

Paths may be files, directories (all non-hidden files below them, sorted by
relative path) or glob patterns (sorted matches). ``~`` and ``$VARS`` are
expanded; a relative path that does not exist is also looked up under
``$TLM_DATA_DIR``, so configs can name ``wikipedia_en_excerpt/...`` portably.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tlm_jax.config import DataConfig
from tlm_jax.data.hf_source import HFSource
from tlm_jax.data.source_readers import (
    expand_paths,
    file_sha256,
    json_records,
    read_jsonl,
    read_lines,
    read_pile,
    read_pile_records,
    read_text,
    read_tfds,
    read_wikiextractor,
    text_of,
    tfds_source,
)
from tlm_jax.data.synthetic import SYNTHETIC_VERSION, synthetic_corpus
from tlm_jax.errors import TLMError

#: Source kinds understood by :func:`iter_documents`.
KINDS = ("text", "lines", "jsonl", "wikiextractor", "pile", "tfds", "hf", "synthetic")

_FILE_KINDS = ("text", "lines", "jsonl", "wikiextractor", "pile")
_FINGERPRINT_CHARS = 16


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise TLMError(f"unknown source kind {kind!r}", f"use one of: {', '.join(KINDS)}")


def iter_documents(
    kind: str,
    paths: Sequence[str],
    *,
    text_field: str = "text",
    domains: Sequence[str] | None = None,
    tfds_name: str | None = None,
    tfds_split: str = "train",
    tfds_data_dir: str | None = None,
    hf_path: str = "",
    hf_name: str | None = None,
    hf_split: str = "train",
    hf_streaming: bool = False,
    min_chars: int = 1,
    synthetic_docs: int = 2000,
    synthetic_seed: int = 0,
) -> Iterator[str]:
    """Stream the documents of a source, one text per item, in a deterministic order.

    Args:
        kind: one of :data:`KINDS`:
            ``"text"``: documents separated by one or more blank lines;
            ``"lines"``: one document per non-empty line (stripped);
            ``"jsonl"``: one JSON object per line, text in ``text_field``;
            ``"wikiextractor"``: ``<doc>`` records; the body (non-blank lines after
            the title line, joined with ``"\\n"``), empty-body records dropped;
            ``"pile"``: Pile JSONL (``.jsonl.zst``/``.jsonl.gz``/``.jsonl``),
            filtered to ``meta.pile_set_name in domains`` when given;
            ``"tfds"``: ``tfds.data_source(tfds_name, split=tfds_split,
            data_dir=tfds_data_dir)``, feature ``text_field``;
            ``"hf"``: split ``hf_split`` of a Hugging Face ``datasets`` dataset, column
            ``text_field`` (:class:`tlm_jax.data.hf_source.HFSource`);
            ``"synthetic"``: :func:`tlm_jax.data.synthetic.synthetic_corpus`.
        paths: files, directories or globs (ignored by ``tfds``, ``hf`` and ``synthetic``).
        text_field: JSON field / TFDS feature / dataset column holding the text.
        domains: Pile set names to keep (``None`` keeps all).
        tfds_name, tfds_split, tfds_data_dir: the TFDS dataset to read.
        hf_path, hf_name, hf_split, hf_streaming: the Hugging Face dataset to read: a
            ``save_to_disk`` folder, a folder of data files or a Hub name; its config;
            its split; whether ``load_dataset`` streams it.
        min_chars: documents whose stripped text is shorter are skipped.
        synthetic_docs, synthetic_seed: size and seed of the synthetic corpus.

    Returns:
        An iterator over document texts.

    Raises:
        TLMError: at call time for an unknown kind, a missing path or an unopenable
            TFDS or Hugging Face dataset; while iterating for a malformed record (naming
            file and line, or split and row).
    """
    # Validate eagerly (not at the first next()) so a bad config fails where it is built.
    _check_kind(kind)
    domains = _normalize_domains(kind, domains)
    docs: Iterator[str]
    if kind in _FILE_KINDS:
        files = expand_paths(paths)
        if kind == "pile":
            docs = read_pile(files, text_field, domains)
        else:
            reader: Callable[[Path], Iterator[str]] = {
                "text": read_text,
                "lines": read_lines,
                "jsonl": functools.partial(read_jsonl, text_field=text_field),
                "wikiextractor": read_wikiextractor,
            }[kind]
            docs = (doc for path in files for doc in reader(path))
    elif kind == "tfds":
        docs = read_tfds(tfds_source(tfds_name, tfds_split, tfds_data_dir), str(tfds_name),
                          text_field)
    elif kind == "hf":
        docs = HFSource(hf_path, hf_name or None, hf_split, hf_streaming, text_field).documents()
    else:
        docs = synthetic_corpus(synthetic_docs, synthetic_seed)
    return (doc for doc in docs if len(doc.strip()) >= min_chars)


def iter_records(
    kind: str,
    paths: Sequence[str],
    *,
    text_field: str = "text",
    domains: Sequence[str] | None = None,
    min_chars: int = 1,
    **kwargs: Any,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Like :func:`iter_documents`, but each item is ``(text, metadata)``.

    ``metadata`` is the JSON record without its text field for ``"jsonl"`` and
    ``"pile"`` sources (dates, domains, URLs, ...), the row's other columns for
    ``"hf"``, and ``{}`` for the other kinds.
    Order and skipping are exactly those of :func:`iter_documents` with the same
    arguments (``kwargs`` are passed on), so item ``i`` is document ``i``.
    """
    _check_kind(kind)
    domains = _normalize_domains(kind, domains)
    recs: Iterator[tuple[str, dict[str, Any]]]
    if kind == "jsonl":
        files = expand_paths(paths)
        recs = ((text_of(path, lineno, r, text_field), r)
                for path in files for lineno, r in json_records(path))
    elif kind == "pile":
        recs = read_pile_records(expand_paths(paths), text_field, domains)
    elif kind == "hf":
        recs = _hf_source(text_field, kwargs).records()
    else:
        docs = iter_documents(kind, paths, text_field=text_field, domains=domains,
                              min_chars=min_chars, **kwargs)
        return ((d, {}) for d in docs)
    return ((t, {k: v for k, v in r.items() if k != text_field}) for t, r in recs
            if len(t.strip()) >= min_chars)


def _hf_source(text_field: str, options: dict[str, Any]) -> HFSource:
    return HFSource(options.get("hf_path", ""), options.get("hf_name") or None,
                    options.get("hf_split", "train"), bool(options.get("hf_streaming", False)),
                    text_field)


def source_options(cfg: DataConfig) -> dict[str, Any]:
    """The reading options of ``cfg`` as keywords of :func:`iter_documents` (every kind's)."""
    return dict(text_field=cfg.text_field, domains=list(cfg.domains) or None,
                tfds_name=cfg.tfds_name or None, tfds_split=cfg.tfds_split,
                tfds_data_dir=cfg.tfds_data_dir or None, hf_path=cfg.hf_path,
                hf_name=cfg.hf_name or None, hf_split=cfg.hf_split, hf_streaming=cfg.hf_streaming)


def _normalize_domains(kind: str, domains: Sequence[str] | None) -> list[str] | None:
    if isinstance(domains, str):
        domains = [domains]
    if not domains:
        return None  # an empty list means "no filter", like None
    if kind != "pile":
        raise TLMError(f"domains={list(domains)} only applies to kind 'pile', not {kind!r}",
                       "remove domains, or use kind 'pile'")
    return list(domains)


def source_fingerprint(
    kind: str,
    paths: Sequence[str],
    *,
    text_field: str = "text",
    domains: Sequence[str] | None = None,
    tfds_name: str | None = None,
    tfds_split: str = "train",
    tfds_data_dir: str | None = None,
    hf_path: str = "",
    hf_name: str | None = None,
    hf_split: str = "train",
    hf_streaming: bool = False,
    min_chars: int = 1,
    synthetic_docs: int = 2000,
    synthetic_seed: int = 0,
) -> str:
    """A short hex digest of a source's content and reading options (a cache key part).

    For files: each file's name (not its directory, so moving the data keeps the
    key), byte size and SHA-256 of its bytes, in stream order. For TFDS: name,
    split, data_dir, dataset version and example count. For a Hugging Face dataset:
    config and split, and its data files' names, sizes and SHA-256 (a local folder)
    or its version, sizes, checksums and ``datasets`` fingerprint (a Hub dataset; see
    :meth:`~tlm_jax.data.hf_source.HFSource.fingerprint_parts`). For synthetic: size,
    seed and generator version. The options that change the document stream
    (kind, text_field, domains, min_chars) are always included.

    Takes the same arguments as :func:`iter_documents`.
    """
    _check_kind(kind)
    domains = _normalize_domains(kind, domains)
    parts: list[Any] = [kind, text_field, min_chars]
    if kind == "pile":
        parts.append(None if domains is None else sorted(domains))
    if kind in _FILE_KINDS:
        for path in expand_paths(paths):
            parts.append([path.name, path.stat().st_size, file_sha256(path)])
    elif kind == "tfds":
        source = tfds_source(tfds_name, tfds_split, tfds_data_dir)
        info = getattr(source, "dataset_info", None)
        version = str(info.version) if info is not None else "unknown"
        resolved_dir = str(Path(tfds_data_dir).expanduser().resolve()) if tfds_data_dir else None
        parts += [tfds_name, tfds_split, resolved_dir, version, len(source)]
    elif kind == "hf":
        parts += HFSource(hf_path, hf_name or None, hf_split, hf_streaming,
                          text_field).fingerprint_parts()
    else:
        parts += [synthetic_docs, synthetic_seed, SYNTHETIC_VERSION]
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:_FINGERPRINT_CHARS]
