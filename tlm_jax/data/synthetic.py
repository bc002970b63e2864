"""A small English-like encyclopedic corpus the package generates itself.

A fresh clone has no downloaded data, yet the quickstart, the tests and the
notebooks must still pretrain something. Random word salad would teach a
masked-LM nothing, so this generator writes short Wikipedia-style articles with
real, learnable structure:

* a fixed **world** (built from a constant seed, the same for every corpus):
  real countries and cities, with fictional but *consistent* facts: each city
  has one population, rank, founding century and university; each sports club
  has one city, league, stadium, founding year, colours and rival; each league
  has one founding year (so "the 57th season" always matches the year);
* per-document **entities** (people) whose facts stay consistent inside the
  document: pronoun and gendered nouns agree, nationality follows the birth
  country, ages at death follow the dates, career years follow the birth year;
* grammatical agreement: a/an, singular/plural counts, tense (alive people
  "is", dead people "was"; active athletes "plays", retired ones "played").

Document ``i`` of seed ``s`` depends only on ``(s, i)``, so a corpus of N
documents is a prefix of any longer corpus with the same seed.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

from tlm_jax.data.synthetic_articles import city_doc, person_doc, season_doc, team_doc
from tlm_jax.data.synthetic_world import world
from tlm_jax.errors import TLMError

#: Bump when the generated text changes, so token caches keyed on it are rebuilt.
SYNTHETIC_VERSION = 1

_MIN_WORDS = 50
_MAX_WORDS = 200


def _document(seed: int, index: int) -> str:
    rng = random.Random(f"tlm-synthetic:{seed}:{index}")
    w = world()
    makers = (person_doc, person_doc, person_doc, city_doc, team_doc, season_doc)
    sentences = rng.choice(makers)(rng, w)
    # Short articles get a second, related article appended, like a merged stub.
    while sum(len(s.split()) for s in sentences) < _MIN_WORDS:
        sentences += rng.choice(makers)(rng, w)
    kept, words = [], 0
    for s in sentences:
        n = len(s.split())
        if kept and words + n > _MAX_WORDS:
            break
        kept.append(s)
        words += n
    return " ".join(kept)


def synthetic_corpus(num_docs: int = 2000, seed: int = 0) -> Iterator[str]:
    """Yield ``num_docs`` synthetic encyclopedic documents (50-200 words each).

    Deterministic given ``seed``; document ``i`` depends only on ``(seed, i)``,
    so a shorter corpus is a prefix of a longer one with the same seed.

    Args:
        num_docs: number of documents to generate.
        seed: selects the documents; the world facts do not depend on it.

    Raises:
        TLMError: if ``num_docs`` is negative.
    """
    if num_docs < 0:
        raise TLMError(f"synthetic corpus size num_docs={num_docs} is negative",
                       "give num_docs >= 0")
    return (_document(seed, i) for i in range(num_docs))


#: Article kinds of :func:`synthetic_labelled_texts`, in label order.
SYNTHETIC_KINDS = ("person", "city", "team", "season")
_KIND_MAKERS = {"person": person_doc, "city": city_doc, "team": team_doc,
                "season": season_doc}
# Fewest sentences any maker writes after its title sentence (a person article has 5-9).
_MIN_BODY_SENTENCES = 4


def synthetic_labelled_texts(per_kind: int = 1000, seed: int = 0, window: int = 2
                             ) -> Iterator[tuple[str, str]]:
    """Yield ``(kind, text)`` pairs: short passages labelled by the kind of article they come from.

    Candidate ``i`` is an article of kind ``SYNTHETIC_KINDS[i % 4]`` written from
    its own generator seeded with ``("tlm-synthetic-task", seed, i)``: a stream
    separate from :func:`synthetic_corpus`'s, so no article behind these texts is
    a pretraining document (the world facts are shared, as facts recur across
    Wikipedia articles, so a sentence stating e.g. a city's population can occur
    in both). The text is ``window`` consecutive sentences starting at a seeded
    position *after* the title sentence, because that sentence names the kind
    outright ("X is a city in ..."). A passage already yielded for its kind is
    skipped, so the texts are unique and a train/test split cannot leak.

    Kinds are interleaved (person, city, team, season, person, ...) until each
    has ``per_kind`` texts; the first ``n`` texts of a kind are the same for any
    ``per_kind >= n``.

    Raises:
        TLMError: ``per_kind < 0``, ``window`` outside ``1..4``, or too few
            distinct passages of a kind for ``per_kind``.
    """
    if per_kind < 0:
        raise TLMError(f"per_kind={per_kind} is negative", "give per_kind >= 0")
    if not 1 <= window <= _MIN_BODY_SENTENCES:
        raise TLMError(f"window={window} sentences is outside 1..{_MIN_BODY_SENTENCES}",
                       f"use a window of 1 to {_MIN_BODY_SENTENCES} sentences")
    w = world()
    seen: dict[str, set[str]] = {k: set() for k in SYNTHETIC_KINDS}
    # Windows of city/team articles repeat often (their facts are fixed); give up
    # long before looping forever if a kind runs out of distinct passages.
    limit = len(SYNTHETIC_KINDS) * (50 * per_kind + 100)
    i = 0
    while any(len(s) < per_kind for s in seen.values()):
        if i >= limit:
            short = {k: len(s) for k, s in seen.items() if len(s) < per_kind}
            raise TLMError(f"only {short} distinct {window}-sentence passages found in {i} "
                           f"synthetic articles, {per_kind} per kind requested",
                           "request fewer rows per kind or a longer window")
        kind = SYNTHETIC_KINDS[i % len(SYNTHETIC_KINDS)]
        if len(seen[kind]) < per_kind:
            rng = random.Random(f"tlm-synthetic-task:{seed}:{i}")
            body = _KIND_MAKERS[kind](rng, w)[1:]
            start = rng.randrange(max(len(body) - window, 0) + 1)
            text = " ".join(body[start:start + window])
            if len(body) >= window and text not in seen[kind]:
                seen[kind].add(text)
                yield kind, text
        i += 1


def write_synthetic_corpus(path: str | os.PathLike[str], num_docs: int = 2000,
                           seed: int = 0) -> Path:
    """Write :func:`synthetic_corpus` as gzip JSONL (``{"id": i, "text": ...}`` per line).

    The gzip header carries no timestamp or file name, so the bytes (and thus
    :func:`tlm_jax.data.sources.source_fingerprint`) depend only on the content.
    Readable with ``iter_documents("jsonl", [path])``.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                               mtime=0) as gz:
        for i, text in enumerate(synthetic_corpus(num_docs, seed)):
            gz.write((json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n")
                     .encode("utf-8"))
    return path
