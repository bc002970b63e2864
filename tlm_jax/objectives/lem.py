"""LEM: linguistic-entity masking (Fernando & Ranathunga, arXiv 2501.05700).

MLM whose masked positions are chosen among *linguistic units* -- named-entity
spans, verbs and nouns first, in that priority -- with exactly **one** token
masked inside each chosen unit, so the rest of the unit stays visible. Leftover
budget goes to other words, again one token each. Corruption of the chosen
tokens is BERT's 80 % [MASK] / 10 % random / 10 % kept; the loss is the MLM
cross-entropy at the chosen positions.

The heuristic tagger (:func:`tag_sentence`, offline, no model) works on raw,
cased text:

* **entity**: a capitalised word that is not sentence-initial, or a
  sentence-initial one directly followed by another capitalised word; words of
  the closed-class list (``The``, ``In``, ``He``, ...) never are. Consecutive
  entity words form one *span* (capitalised-word runs: ``Santa Cruz Warriors``).
* **verb**: a common verb form (``is``, ``was``, ``became``, ``won``, ...), a word
  right after a modal/``to``/subject pronoun, or a word with a verbal suffix
  (``-ed``, ``-ing``, ``-ize``/``-ise``, ``-ify``, ``-ated``) not after a determiner.
* **noun**: a word right after a determiner or preposition, or with a nominal
  suffix (``-tion``, ``-ment``, ``-ness``, ``-ity``, ``-ism``, ``-ship``, ``-er``, ...).
* everything else (closed-class words, numbers, punctuation) is untagged.

Because the token cache stores (usually lowercased) ids only, tags live at the
vocabulary level: :meth:`LEM.setup` tags the first ``tag_docs`` raw training
documents and gives each word-initial token id the majority tag of the words
that start with it (a type-level tag, computed host-side once and closed over as
a constant ``[V]`` table, like C-RTS clusters). A word is a word-initial token
plus its ``##`` continuations; an entity span is a run of entity-tagged words.

Options (``objective.options.lem.<key>``): ``ne``/``verb``/``noun`` (1 = the type
is prioritised, 0 = treated as an ordinary word; the authors' scripts use 0/1
quotas), ``rate`` (default ``objective.mask_rate``), ``tag_docs`` (default 2000).
The budget is ``N = clip(round(rate * L), 1, max_predictions)`` with ``L`` the
non-pad length including [CLS]/[SEP], as in the authors' scripts.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tlm_jax.errors import TLMError
from tlm_jax.objectives.base import (
    Batch,
    LossTerms,
    Objective,
    candidate_mask,
    cross_entropy_terms,
    example_keys,
    register,
)

NONE, NOUN, VERB, ENTITY = 0, 1, 2, 3
TAG_NAMES = ("none", "noun", "verb", "entity")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


DETERMINERS = _words(
    "the a an this that these those his her its their our my your some many several each every "
    "no any both all another such")
PREPOSITIONS = _words(
    "of in on at for with by from into during after before under over between about against "
    "through within without")
MODALS = _words("to will would can could may might shall should must did does do")
SUBJECTS = _words("he she they we i who it")
CLOSED = frozenset(
    DETERMINERS | PREPOSITIONS | MODALS | SUBJECTS
    | _words("and or but nor so yet as than if when while where which what whom whose there here "
             "then also not only him them us me you"))
COMMON_VERBS = _words(
    "is was are were be been being am has had have having became become becomes won win wins "
    "made make makes took take takes went go goes said says played play plays joined "
    "released served born died moved began begin left received signed appeared worked used "
    "included includes called known located scored founded formed named elected produced "
    "published directed written wrote led returned")
VERB_SUFFIXES = ("ed", "ing", "ize", "ise", "izes", "ises", "ify", "ifies", "ated")
NOUN_SUFFIXES = ("tion", "tions", "sion", "sions", "ment", "ments", "ness", "ity", "ities", "ism",
                 "isms", "ist", "ists", "ship", "ships", "ance", "ence", "ery", "er", "ers", "or",
                 "ors", "age", "hood", "dom")

_TOKEN = re.compile(r"[^\W\d_][\w'\-]*|\d+(?:[.,]\d+)*|[^\s\w]")
_SENT_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")


def _is_cap(w: str) -> bool:
    return w[:1].isupper()


def tag_sentence(tokens: list[str]) -> list[int]:
    """Heuristic tags (:data:`NONE`/:data:`NOUN`/:data:`VERB`/:data:`ENTITY`) of one sentence."""
    n = len(tokens)
    words = [t if t[:1].isalpha() else "" for t in tokens]
    lower = [w.lower() for w in words]
    tags = [NONE] * n
    for i, w in enumerate(words):
        if not w or lower[i] in CLOSED:
            continue
        if _is_cap(w):
            nxt = i + 1 < n and words[i + 1] and _is_cap(words[i + 1]) and lower[i + 1] not in CLOSED
            if i > 0 or nxt:
                tags[i] = ENTITY
    for i, w in enumerate(words):
        if not w or tags[i] == ENTITY or lower[i] in CLOSED:
            continue
        lw, prev = lower[i], lower[i - 1] if i > 0 else ""
        if lw in COMMON_VERBS or prev in MODALS or prev in SUBJECTS or (
                len(lw) > 4 and lw.endswith(VERB_SUFFIXES) and prev not in DETERMINERS):
            tags[i] = VERB
        elif prev in DETERMINERS or prev in PREPOSITIONS or (
                len(lw) > 4 and lw.endswith(NOUN_SUFFIXES)):
            tags[i] = NOUN
    return tags


def tag_text(text: str) -> list[tuple[str, int]]:
    """``(word, tag)`` for every alphabetic word of ``text`` (sentence by sentence)."""
    out = []
    for line in text.splitlines():
        for sent in _SENT_END.split(line):
            toks = _TOKEN.findall(sent)
            out += [(t, g) for t, g in zip(toks, tag_sentence(toks), strict=True) if t[:1].isalpha()]
    return out


def entity_spans(text: str) -> list[str]:
    """The capitalised-word runs the tagger calls entities, in order (e.g. for templates)."""
    spans, cur = [], []
    for line in text.splitlines():
        for sent in _SENT_END.split(line):
            toks = _TOKEN.findall(sent)
            for t, g in zip(toks, tag_sentence(toks), strict=True):
                if g == ENTITY:
                    cur.append(t)
                elif cur:
                    spans.append(" ".join(cur))
                    cur = []
            if cur:
                spans.append(" ".join(cur))
                cur = []
    return spans


def vocabulary_tags(docs: Iterable[str], tokenizer: Any, vocab_size: int) -> np.ndarray:
    """Majority tag of each word-initial token id over the words of ``docs`` (``[V]`` int32)."""
    counts: Counter[tuple[str, int]] = Counter()
    for d in docs:
        counts.update(tag_text(d))
    forms = sorted({w for w, _ in counts})
    first: dict[str, int] = {}
    for w, enc in zip(forms, tokenizer.encode_batch(forms, add_special_tokens=False), strict=True):
        if enc.ids:
            first[w] = enc.ids[0]
    votes = np.zeros((vocab_size, len(TAG_NAMES)), np.int64)
    for (w, tag), c in counts.items():
        if w in first and first[w] < vocab_size:
            votes[first[w], tag] += c
    tags = votes.argmax(1).astype(np.int32)
    tags[votes.sum(1) == 0] = NONE
    return tags


def continuation_table(tokenizer: Any, vocab_size: int, prefix: str = "##") -> np.ndarray:
    """``[V]`` bool: ids whose token continues a word (WordPiece ``##`` pieces)."""
    cont = np.zeros(vocab_size, bool)
    for tok, i in tokenizer.get_vocab().items():
        if i < vocab_size and tok.startswith(prefix):
            cont[i] = True
    return cont


def lem_select(ids: jax.Array, key: jax.Array, tags: jax.Array, cont: jax.Array,
               priority: jax.Array, candidates: jax.Array, nonpad: jax.Array, rate: float,
               max_predictions: int) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Choose one token inside each of the top-priority units of ``ids [L]``.

    Units: words (a word-initial token and its continuations); consecutive
    entity words merge into one span. ``priority[tag]`` orders the units (ties
    random); ``candidates`` are the maskable tokens, ``nonpad`` the tokens the
    budget ``round(rate * nonpad.sum())`` counts. Returns ``(positions [P],
    selected [P], info)``; ``info`` holds per-token ``unit`` ids (``L`` for
    non-candidates) and ``unit_tag``.
    """
    length = ids.shape[0]
    k_rep, k_order = jax.random.split(key)
    elig = candidates
    prev_elig = jnp.concatenate([jnp.zeros((1,), bool), elig[:-1]])
    word_start = elig & (~cont[ids] | ~prev_elig)
    word_idx = jnp.cumsum(word_start) - 1
    word_tag = jnp.zeros((length,), jnp.int32).at[jnp.where(word_start, word_idx, length)].set(
        tags[ids], mode="drop")
    tok_tag = jnp.where(elig, word_tag[jnp.maximum(word_idx, 0)], NONE)
    prev_word_tag = jnp.where(word_idx > 0, word_tag[jnp.maximum(word_idx - 1, 0)], NONE)
    # A unit starts at each word start, except an entity word right after an entity word.
    joins = (tok_tag == ENTITY) & (prev_word_tag == ENTITY) & prev_elig
    unit_start = word_start & ~joins
    unit = jnp.where(elig, jnp.cumsum(unit_start) - 1, length)
    u = jax.random.uniform(k_rep, (length,))
    umax = jax.ops.segment_max(jnp.where(elig, u, -1.0), unit, num_segments=length + 1)
    rep = elig & (u == umax[unit])
    unit_tag = tok_tag  # every token of a unit shares the tag of the unit's first word
    score = priority[unit_tag].astype(jnp.float32) + jax.random.uniform(k_order, (length,))
    score = jnp.where(rep, score, -1.0)
    _, positions = jax.lax.top_k(score, max_predictions)
    n_units = rep.sum()
    n_real = nonpad.sum()
    budget = jnp.clip(jnp.round(rate * n_real).astype(jnp.int32), 1, max_predictions)
    selected = jnp.arange(max_predictions) < jnp.minimum(budget, n_units)
    return positions.astype(jnp.int32), selected, {"unit": unit, "unit_tag": unit_tag}


@register("lem")
@dataclass
class LEM(Objective):
    """Linguistic-entity masking on the MLM head (see the module docstring)."""

    tag_table: np.ndarray | None = field(default=None, repr=False)
    cont_table: np.ndarray | None = field(default=None, repr=False)

    def setup(self, corpus: Any) -> None:
        """Tag the first ``tag_docs`` raw training documents into a vocabulary tag table."""
        if self.tag_table is not None:
            return
        if corpus.documents is None:
            raise TLMError("LEM needs the raw training documents to tag", "build it via build_run")
        n = int(self.options.get("tag_docs", 2000))
        v = self.special.vocab_size
        self.set_tables(vocabulary_tags(islice(corpus.documents(), n), corpus.tokenizer, v),
                        continuation_table(corpus.tokenizer, v))

    def set_tables(self, tags: np.ndarray, cont: np.ndarray) -> None:
        """Install the ``[V]`` tag and continuation tables (tests and :meth:`setup`)."""
        self.tag_table = np.asarray(tags, np.int32)
        self.cont_table = np.asarray(cont, bool)

    @property
    def priority(self) -> np.ndarray:
        """Priority of each tag: entity 3 > verb 2 > noun 1 > other 0 (0 if disabled)."""
        on = {t: float(self.options.get(t, 1.0)) > 0 for t in ("ne", "verb", "noun")}
        return np.asarray([0, 1 if on["noun"] else 0, 2 if on["verb"] else 0,
                           3 if on["ne"] else 0], np.int32)

    def select(self, ids: jax.Array, key: jax.Array
               ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """Positions ``[P]`` and their validity for one sequence ``[L]``."""
        if self.tag_table is None or self.cont_table is None:
            raise TLMError("LEM has no tag tables yet", "build it through build_run / setup()")
        rate = float(self.options.get("rate", self.cfg.mask_rate))
        cands = candidate_mask(ids, self.special)
        return lem_select(ids, key, jnp.asarray(self.tag_table), jnp.asarray(self.cont_table),
                           jnp.asarray(self.priority), cands, ids != self.special.pad, rate,
                           self.max_predictions)

    def corrupt(self, ids: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
        """LEM selection then 80/10/10 corruption of one sequence."""
        k_sel, k_kind, k_rand = jax.random.split(key, 3)
        positions, selected, _ = self.select(ids, k_sel)
        original = ids[positions]
        u = jax.random.uniform(k_kind, positions.shape)
        pool = jnp.asarray(self.special.ordinary_ids())
        random_tok = pool[jax.random.randint(k_rand, positions.shape, 0, pool.shape[0])]
        cfg = self.cfg
        new = jnp.where(u < cfg.mask_token_prob, self.special.mask,
                        jnp.where(u < cfg.mask_token_prob + cfg.random_token_prob, random_tok,
                                  original))
        new = jnp.where(selected, new, original)
        return {"input_ids": ids.at[positions].set(new), "masked_positions": positions,
                "labels": original, "weights": selected.astype(jnp.float32)}

    def transform(self, batch: Batch, rng: jax.Array) -> tuple[Batch, Batch]:
        ids = batch["input_ids"]
        keys = example_keys(rng, batch["index"])
        m = jax.vmap(self.corrupt)(ids, keys)
        inputs = {"input_ids": m["input_ids"], "attention_mask": ids != self.special.pad,
                  "masked_positions": m["masked_positions"]}
        return inputs, {"labels": m["labels"], "weights": m["weights"]}

    def loss(self, outputs: dict[str, jax.Array], targets: Batch) -> LossTerms:
        return cross_entropy_terms(outputs["mlm_logits"], targets["labels"], targets["weights"],
                                   self.name)
