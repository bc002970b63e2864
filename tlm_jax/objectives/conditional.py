"""Conditional training (Korbak et al., ICML 2023, "Pretraining Language Models with
Human Preferences").

Host side (:meth:`ConditionalCLM.prepare_document`, applied before tokenization and
cached with the tokens): the document is cut into segments (sentences), each
segment is scored by a pluggable misalignment scorer
(:mod:`tlm_jax.objectives.scorers`), and a control token is put in front of it::

    <|good|> First sentence. <|bad|> A sentence the scorer flags. <|good|> ...

``<|good|>`` iff ``score <= threshold`` (the paper's rule; default threshold 0
with the lexicon scorer: no lexicon word). With probability
``drop_token_fraction`` (default 0; the authors' code uses 0.01) a segment gets
no token, decided by a hash of the segment so the data stay deterministic. The
two control tokens are added to the vocabulary as special tokens.

Device side this is plain next-token MLE (``clm``): control tokens are inputs
*and* targets, as in the authors' code. At inference, prompt with
``[CLS] <|good|>`` and ban both control tokens (``tlm generate --control
'<|good|>'``; :class:`~tlm_jax.generate.Generator` always bans ``<|...|>`` ids).

Options (``objective.options.conditional.<key>``): ``scorer`` (name or
``module:attr``, default ``lexicon``), ``threshold``, ``drop_token_fraction``,
``seed``, ``lexicon_file`` (for the lexicon scorer).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tlm_jax.objectives.base import register
from tlm_jax.objectives.clm import CLM
from tlm_jax.objectives.scorers import Scorer, get_scorer

GOOD, BAD = "<|good|>", "<|bad|>"
CONTROL_TOKENS = (GOOD, BAD)

# A sentence ends at . ! or ? followed by space and a capital, digit or quote/bracket.
_SENT_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")


def segments(text: str) -> list[str]:
    """Sentences of ``text``: lines (paragraphs) split at sentence-final punctuation."""
    out = []
    for line in text.splitlines():
        out += [s.strip() for s in _SENT_END.split(line.strip()) if s.strip()]
    return out


def unit_hash(seed: int, text: str) -> float:
    """A deterministic number in ``[0, 1)`` from ``seed`` and ``text``."""
    h = hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def control_token(score: float, threshold: float) -> str:
    """``<|good|>`` iff ``score <= threshold`` (a score equal to the threshold is good)."""
    return GOOD if score <= threshold else BAD


def strip_control(text: str) -> str:
    """Remove control tokens and the spaces they introduced."""
    for t in CONTROL_TOKENS:
        text = text.replace(t + " ", "").replace(t, "")
    return text


def annotate(text: str, scorer: Scorer, threshold: float, drop: float = 0.0, seed: int = 0
             ) -> tuple[str, list[str]]:
    """``(rewritten document, control token per segment ("" = dropped))``."""
    parts, tokens = [], []
    for seg in segments(text):
        tok = control_token(scorer.score(seg), threshold)
        if drop > 0 and unit_hash(seed, seg) < drop:
            tok = ""
        tokens.append(tok)
        parts.append(f"{tok} {seg}" if tok else seg)
    return " ".join(parts), tokens


@register("conditional")
@dataclass
class ConditionalCLM(CLM):
    """Causal LM on documents whose segments carry ``<|good|>``/``<|bad|>`` control tokens."""

    extra_special: ClassVar[tuple[str, ...]] = CONTROL_TOKENS
    _scorer: Scorer | None = field(default=None, repr=False)

    @property
    def scorer(self) -> Scorer:
        """The configured scorer (built on first use)."""
        if self._scorer is None:
            opts = {k: v for k, v in self.options.items() if k == "lexicon_file"}
            opts.update(dict(self.options.get("scorer_options", {}) or {}))
            self._scorer = get_scorer(str(self.options.get("scorer", "lexicon")), **opts)
        return self._scorer

    @property
    def threshold(self) -> float:
        return float(self.options.get("threshold", 0.0))

    def prepare_document(self, text: str) -> str:
        out, _ = annotate(text, self.scorer, self.threshold,
                          float(self.options.get("drop_token_fraction", 0.0)),
                          int(self.options.get("seed", 0)))
        return out

    def document_key(self) -> str:
        return f"{super().document_key()}|{self.scorer.fingerprint()}"

    def data_stats(self, docs: Any) -> dict[str, float]:
        """Segment counts and the bad fraction over an iterable of raw documents."""
        n = bad = 0
        for d in docs:
            for seg in segments(d):
                n += 1
                bad += self.scorer.score(seg) > self.threshold
        return {"segments": n, "bad_segments": bad, "bad_fraction": bad / max(n, 1)}
