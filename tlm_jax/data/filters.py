"""Data-curation filters ("A Pretrainer's Guide to Training Data", Longpre et al. 2024).

A filter scores every training document once and drops those on the wrong side
of a threshold. Filters are named in ``data.filters`` and configured under
``data.filter_options.<name>``; :func:`tlm_jax.data.corpus.prepare_corpus` applies
them, in order, to the planned *training* documents (validation documents are
never filtered, so validation losses of differently filtered runs compare), logs
the kept/dropped counts of each and stores them in the run's ``data_info.json``.

Filter kinds and their default scorers:

============  =====================================================================
``quality``   ``perplexity``: mean token NLL under a small trained tlm_jax model
              (``run=RUN_DIR``; registered by :mod:`tlm_jax.train.docscore`, since
              the data layer cannot run models). Lower = more like the reference
              model's training text ("quality" in the CCNet sense, a documented
              stand-in for the PaLM/GLaM classifier the guide used).
``toxicity``  ``lexicon``: fraction of a document's words found in
              :data:`TOXICITY_LEXICON` -- an offline, deliberately tiny and
              non-graphic list of insults, profanity and hate terms written for this
              package (a proxy for the Perspective API; it flags words, not tone).
``domain``    ``domain``: 1 if the document's metadata ``field`` (dotted path, e.g.
              ``meta.pile_set_name``) is in ``drop`` (or not in ``keep_only``), else 0;
              the rule defaults to ``max=0.5`` (drop the 1s).
``age``       ``date``: the date in metadata ``field`` (default ``date``; ``YYYY``,
              ``YYYY-MM``, ``YYYY-MM-DD`` or ISO datetime) as a proleptic ordinal;
              ``cutoff=YYYY-MM-DD`` drops documents dated after it.
============  =====================================================================

Threshold rule keys (every filter): ``max`` (drop ``score > max``), ``min`` (drop
``score < min``: the guide's *inverse* filters), ``keep`` (a percentile-chosen
threshold: keep the fraction ``keep`` with the lowest scores -- with
``inverse=true`` the highest), ``missing`` (``drop``/``keep`` documents whose score
is NaN, e.g. no date). The rule only compares scores with a threshold, so the
result depends on the scores alone, never on document order; ties at a
percentile threshold are all kept. All other keys go to the scorer, and
``scorer=NAME`` (a registry name or ``module:attribute``) replaces the default.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tlm_jax.errors import TLMError

KINDS = ("quality", "toxicity", "domain", "age")
DEFAULT_SCORERS = {"quality": "perplexity", "toxicity": "lexicon", "domain": "domain",
                   "age": "date"}
RULE_KEYS = ("max", "min", "keep", "inverse", "missing")

# Insults, profanity and hate terms; deliberately small and non-graphic. It contains no
# topic words (war, death, crime), which would turn a toxicity filter into a topic filter
# on encyclopedic text.
TOXICITY_LEXICON: tuple[str, ...] = (
    "idiot", "idiots", "idiotic", "stupid", "stupidity", "moron", "morons", "moronic", "dumb",
    "imbecile", "cretin", "fool", "fools", "loser", "losers", "pathetic", "worthless",
    "disgusting", "scum", "jerk", "jerks", "bastard", "bastards", "bitch", "bitches", "crap",
    "crappy", "damn", "damned", "shit", "shitty", "fuck", "fucking", "fucked", "asshole",
    "assholes", "hate", "hated", "hateful", "hatred", "hates", "racist", "racists", "racism",
    "bigot", "bigots", "bigotry", "nazi", "nazis", "slur", "slurs", "insult", "insults",
    "insulted", "freak", "freaks",
)

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class Doc:
    """A document as filters see it: its text and its source metadata (JSON fields)."""

    text: str
    meta: dict[str, Any] = field(default_factory=dict)


class DocScorer(Protocol):
    """What a filter needs: batched scores (higher = worse) and a cache fingerprint."""

    def score(self, docs: Sequence[Doc]) -> np.ndarray:
        """One float per document (NaN = no score, handled by the rule's ``missing``)."""
        ...

    def fingerprint(self) -> str:
        """A stable string naming the scorer and its settings (joins the cache keys)."""
        ...


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_lexicon(lexicon: Iterable[str] | None, lexicon_file: str | None,
                 default: Iterable[str]) -> frozenset[str]:
    """Lowercase word forms: ``lexicon_file`` (one per line, ``#`` starts a comment) if given,
    else ``lexicon``, else ``default``; an empty result is refused."""
    if lexicon_file:
        path = Path(lexicon_file).expanduser()
        if not path.is_file():
            raise TLMError(f"lexicon file {path} not found", "pass an existing word list")
        lexicon = [ln.split("#", 1)[0].strip().lower() for ln in path.read_text().splitlines()]
    words = frozenset(w for w in (lexicon or default) if w)
    if not words:
        raise TLMError("the lexicon is empty", "give at least one word")
    return words


class LexiconToxicity:
    """Fraction of a document's words that are in a lexicon (default :data:`TOXICITY_LEXICON`).

    Args:
        lexicon: lowercase word forms, matched as whole words.
        lexicon_file: one word per line (``#`` comments); replaces ``lexicon``.
    """

    def __init__(self, lexicon: Iterable[str] | None = None, lexicon_file: str | None = None
                 ) -> None:
        self.lexicon = load_lexicon(lexicon, lexicon_file, TOXICITY_LEXICON)

    def score(self, docs: Sequence[Doc]) -> np.ndarray:
        out = np.zeros(len(docs), np.float64)
        for i, d in enumerate(docs):
            ws = _WORD.findall(d.text.lower())
            out[i] = sum(w in self.lexicon for w in ws) / len(ws) if ws else 0.0
        return out

    def fingerprint(self) -> str:
        return "lexicon:" + _digest(sorted(self.lexicon))


def meta_value(meta: dict[str, Any], path: str) -> Any:
    """``meta["a"]["b"]`` for ``path="a.b"`` (JSON-string levels are parsed); None if absent."""
    node: Any = meta
    for part in path.split("."):
        if isinstance(node, str):
            try:
                node = json.loads(node)
            except json.JSONDecodeError:
                return None
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class DomainScorer:
    """1.0 for documents of a removed domain, 0.0 for the others, NaN without the field.

    Args:
        field: dotted metadata path of the domain label.
        drop: domains to remove (the guide's "No-X" mixes).
        keep_only: alternatively, the only domains to keep.
    """

    def __init__(self, field: str = "domain", drop: Sequence[str] = (),
                 keep_only: Sequence[str] = ()) -> None:
        if bool(drop) == bool(keep_only):
            raise TLMError("the domain filter needs exactly one of drop=[...] or keep_only=[...]",
                           "e.g. data.filter_options.domain.drop=[Books3]")
        self.field, self.drop, self.keep_only = field, tuple(drop), tuple(keep_only)

    def score(self, docs: Sequence[Doc]) -> np.ndarray:
        out = np.full(len(docs), np.nan)
        for i, d in enumerate(docs):
            v = meta_value(d.meta, self.field)
            if v is None:
                continue
            out[i] = float(str(v) in self.drop) if self.drop else float(str(v) not in self.keep_only)
        return out

    def fingerprint(self) -> str:
        return "domain:" + _digest([self.field, sorted(self.drop), sorted(self.keep_only)])


def date_ordinal(value: Any) -> float:
    """A date as its proleptic Gregorian ordinal (``date.toordinal``); NaN if unparseable.

    Accepts ``YYYY`` (-> Jan 1), ``YYYY-MM`` (-> the 1st), ``YYYY-MM-DD``, ISO
    datetimes (the date part) and integer years.
    """
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        return math.nan
    s = value.strip()[:10]
    for fmt in ("%Y-%m-%d", "%Y-%m", "%Y"):
        try:
            return float(dt.datetime.strptime(s, fmt).date().toordinal())
        except ValueError:
            continue
    return math.nan


class DateScorer:
    """The date in metadata ``field`` as an ordinal (NaN when missing or unparseable)."""

    def __init__(self, field: str = "date") -> None:
        self.field = field

    def score(self, docs: Sequence[Doc]) -> np.ndarray:
        return np.asarray([date_ordinal(meta_value(d.meta, self.field)) for d in docs],
                          np.float64)

    def fingerprint(self) -> str:
        return f"date:{self.field}"


SCORERS: dict[str, Callable[..., DocScorer]] = {
    "lexicon": LexiconToxicity, "domain": DomainScorer, "date": DateScorer}


def register_scorer(name: str, factory: Callable[..., DocScorer]) -> None:
    """Add a document scorer under ``name`` (higher layers register model-based ones)."""
    SCORERS[name] = factory


def get_scorer(spec: str, **options: Any) -> DocScorer:
    """A scorer by registry name or ``module:attribute``, built with ``options``."""
    if spec in SCORERS:
        try:
            return SCORERS[spec](**options)
        except TypeError as e:
            raise TLMError(f"bad options for document scorer '{spec}': {e}",
                           "check data.filter_options.<filter>") from e
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise TLMError(f"cannot import document scorer '{spec}': {e}",
                           "give module:attribute of a class or factory") from e
        scorer = factory(**options)
        if not hasattr(scorer, "score") or not hasattr(scorer, "fingerprint"):
            raise TLMError(f"'{spec}' did not build an object with score(docs) and fingerprint()",
                           "return a DocScorer")
        return scorer
    hint = (" (the perplexity scorer is registered by tlm_jax.train.docscore: import it, or run "
            "through tlm pretrain)" if spec == "perplexity" else "")
    raise TLMError(f"unknown document scorer '{spec}'{hint}",
                   f"use one of: {', '.join(sorted(SCORERS))}, or module:attribute")


# ----------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """Which scores a filter keeps (see the module docstring)."""

    max: float | None = None
    min: float | None = None
    keep: float | None = None
    inverse: bool = False
    missing: str = "drop"

    def __post_init__(self) -> None:
        if self.keep is not None and not 0.0 < self.keep <= 1.0:
            raise TLMError(f"filter keep={self.keep} is outside (0, 1]", "use e.g. keep=0.8")
        if self.missing not in ("drop", "keep"):
            raise TLMError(f"filter missing={self.missing!r} is unknown", "use drop or keep")
        if self.keep is None and self.max is None and self.min is None:
            raise TLMError("a filter needs a threshold", "set max=, min= or keep= in its options")

    def bounds(self, scores: np.ndarray) -> tuple[float, float]:
        """The ``[lo, hi]`` score interval kept, with ``keep`` resolved on these scores."""
        lo = -math.inf if self.min is None else float(self.min)
        hi = math.inf if self.max is None else float(self.max)
        if self.keep is not None:
            finite = np.sort(scores[np.isfinite(scores)])
            if finite.size:
                m = max(1, math.ceil(self.keep * finite.size - 1e-9))
                if self.inverse:
                    lo = max(lo, float(finite[finite.size - m]))
                else:
                    hi = min(hi, float(finite[m - 1]))
        return lo, hi

    def keep_mask(self, scores: np.ndarray) -> np.ndarray:
        """Boolean mask of the documents this rule keeps."""
        scores = np.asarray(scores, np.float64)
        lo, hi = self.bounds(scores)
        ok = (scores >= lo) & (scores <= hi)
        missing = ~np.isfinite(scores)
        return np.where(missing, self.missing == "keep", ok)

    def describe(self) -> str:
        """A short human-readable form (for logs)."""
        parts = []
        if self.keep is not None:
            parts.append(f"keep {'highest' if self.inverse else 'lowest'} {self.keep:g}")
        if self.max is not None:
            parts.append(f"max {self.max:g}")
        if self.min is not None:
            parts.append(f"min {self.min:g}")
        return ", ".join(parts)


@dataclass(frozen=True)
class FilterSpec:
    """One configured filter: its name, scorer and rule."""

    name: str
    scorer: str
    options: dict[str, Any]
    rule: Rule

    def key(self, fingerprint: str) -> dict[str, Any]:
        """What joins the cache keys: scorer fingerprint and rule."""
        r = self.rule
        return {"name": self.name, "scorer": fingerprint, "max": r.max, "min": r.min,
                "keep": r.keep, "inverse": r.inverse, "missing": r.missing}


def _float(name: str, key: str, v: Any, age: bool) -> float | None:
    if v is None:
        return None
    if age and isinstance(v, str):
        o = date_ordinal(v)
        if math.isnan(o):
            raise TLMError(f"filter {name}: {key}={v!r} is not a date", "write YYYY-MM-DD")
        return o
    try:
        return float(v)
    except (TypeError, ValueError) as e:
        raise TLMError(f"filter {name}: {key}={v!r} is not a number", "give a number") from e


def parse_filters(names: Sequence[str], options: dict[str, Any] | None = None
                  ) -> list[FilterSpec]:
    """``data.filters`` + ``data.filter_options`` -> :class:`FilterSpec` list (validated)."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise TLMError(f"data.filter_options has settings for {unknown}, which are not in "
                       "data.filters", "add them to data.filters or remove their options")
    specs, seen = [], set()
    for name in names:
        if name in seen:
            raise TLMError(f"filter '{name}' is listed twice", "list each filter once")
        seen.add(name)
        opts = dict(options.get(name) or {})
        scorer = str(opts.pop("scorer", DEFAULT_SCORERS.get(name, "")))
        if not scorer:
            raise TLMError(f"unknown filter '{name}'",
                           f"use one of: {', '.join(KINDS)}, or set "
                           f"data.filter_options.{name}.scorer")
        age = scorer == "date"
        rule_kw = {k: opts.pop(k) for k in RULE_KEYS if k in opts}
        if age and "cutoff" in opts:
            rule_kw.setdefault("max", opts.pop("cutoff"))
        if scorer == "domain" and not any(k in rule_kw for k in ("max", "min", "keep")):
            rule_kw["max"] = 0.5
        rule = Rule(max=_float(name, "max", rule_kw.get("max"), age),
                    min=_float(name, "min", rule_kw.get("min"), age),
                    keep=_float(name, "keep", rule_kw.get("keep"), False),
                    inverse=bool(rule_kw.get("inverse", False)),
                    missing=str(rule_kw.get("missing", "drop")))
        specs.append(FilterSpec(name, scorer, opts, rule))
    return specs


def apply_filters(specs: Sequence[FilterSpec], scores: dict[str, np.ndarray]
                  ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Apply the filters in order; the combined keep mask and per-filter counts.

    Each count entry has ``input`` (documents reaching the filter), ``kept``,
    ``dropped`` (of those), ``dropped_alone`` (of all documents, had it been the
    only filter), the resolved ``[lo, hi]`` bounds and the score quartiles.
    """
    n = len(next(iter(scores.values()))) if scores else 0
    keep = np.ones(n, bool)
    info = []
    for spec in specs:
        s = np.asarray(scores[spec.name], np.float64)
        mask = spec.rule.keep_mask(s)
        lo, hi = spec.rule.bounds(s)
        before = int(keep.sum())
        keep &= mask
        finite = s[np.isfinite(s)]
        bounds = [v if math.isfinite(v) else None for v in (lo, hi)]  # JSON has no inf
        info.append({"filter": spec.name, "scorer": spec.scorer, "rule": spec.rule.describe(),
                     "bounds": bounds, "input": before, "kept": int(keep.sum()),
                     "dropped": before - int(keep.sum()),
                     "dropped_alone": int((~mask).sum()), "missing": int((~np.isfinite(s)).sum()),
                     "score_quartiles": (np.quantile(finite, [0, 0.25, 0.5, 0.75, 1]).tolist()
                                         if finite.size else [])})
    return keep, info
