"""Thinking-augmented pretraining (TPT; Wang et al., arXiv 2509.20186).

Each document ``d`` is (with probability ``ratio``) turned into ``[d; t]``::

    <document text> <think> <thinking trajectory> </think>

and the model is trained with ordinary next-token loss on every token (``clm``).
``<think>``/``</think>`` are added to the vocabulary as special tokens. Which
documents are augmented is decided by a hash of ``(seed, document)``, so the
choice is deterministic and the rewritten corpus is cached with the tokens (the
token-cache key includes the generator's fingerprint and the ratio): a second
run with the same settings does no generation and no tokenization.

Generators (``objective.options.thinking.generator``) are pluggable:

* ``template`` (default) -- a rule-based "expert analysis": names the subject
  (the first entity span of the text), restates the first sentence, lists the
  other entities and the years/numbers, and closes with a one-line summary.
  Cheap, deterministic, offline; it adds *structure*, not new knowledge.
* ``file:PATH`` -- precomputed trajectories, a JSONL file of
  ``{"sha1": <sha1 of the stripped document>, "thinking": "..."}`` (or
  ``"text"`` in place of ``"sha1"``); documents without an entry stay plain.
* ``lm:RUN_DIR`` -- a trained tlm_jax causal LM (``model.arch=gpt``) continues
  ``[CLS] <first prompt_tokens tokens of d>`` with the paper's decoding (T=0.6,
  top-p 0.9) for ``max_new`` tokens; generations are also stored in a JSONL
  cache under ``$TLM_CACHE_DIR/thinking/`` keyed by run, step and settings.
* ``module:attr`` -- any factory returning an object with
  ``generate(docs: list[str]) -> list[str | None]`` and ``fingerprint() -> str``.

Other options: ``ratio`` (fraction of documents augmented, default 0.5),
``seed``, ``max_doc_words`` (truncate the document part to this many words so the
trajectory fits in the window; 0 = keep all -- use ``data.packing=pack`` then).
Empty or missing trajectories leave the document plain (explicit policy).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from tlm_jax.data.cache import default_cache_dir
from tlm_jax.errors import TLMError
from tlm_jax.objectives.base import register
from tlm_jax.objectives.clm import CLM
from tlm_jax.objectives.conditional import segments, unit_hash
from tlm_jax.objectives.lem import entity_spans
from tlm_jax.objectives.runs import RunAccess, require_runs

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_YEAR = re.compile(r"\b(1[5-9]\d\d|20\d\d)\b")


class ThinkingGenerator(Protocol):
    """What the objective needs from a generator."""

    def generate(self, docs: list[str]) -> list[str | None]:
        """One trajectory per document (``None``/``""`` = leave the document plain)."""
        ...

    def fingerprint(self) -> str:
        """A stable string identifying the generator and its settings (for cache keys)."""
        ...


def doc_sha1(text: str) -> str:
    """The key of a document in trajectory files: sha1 of the stripped text."""
    return hashlib.sha1(text.strip().encode()).hexdigest()


class TemplateGenerator:
    """Rule-based trajectories (see the module docstring); deterministic, offline."""

    version = 1

    def _one(self, doc: str) -> str | None:
        sents = segments(doc)
        if not sents:
            return None
        spans = list(dict.fromkeys(entity_spans(doc)))
        subject = spans[0] if spans else " ".join(sents[0].split()[:3])
        first = sents[0] if len(sents[0].split()) > 3 or len(sents) < 2 else sents[1]
        others = [s for s in spans[1:6] if s != subject]
        years = sorted(set(_YEAR.findall(doc)))[:4]
        steps = [f"Let me work through this text step by step. It is about {subject}.",
                 f"The key statement is: {first}"]
        if others:
            steps.append(f"Other names that matter here: {', '.join(others)}.")
        if years:
            steps.append(f"The dates mentioned are {', '.join(years)}, which place it in time.")
        if len(sents) > 2:
            steps.append(f"It goes on to say that {sents[-1][0].lower()}{sents[-1][1:]}")
        steps.append(f"So, in short, the text explains who or what {subject} is and why it is "
                     "notable.")
        return " ".join(steps)

    def generate(self, docs: list[str]) -> list[str | None]:
        return [self._one(d) for d in docs]

    def fingerprint(self) -> str:
        return f"template:v{self.version}"


class FileGenerator:
    """Precomputed trajectories from a JSONL file keyed by document sha1 (or full text)."""

    def __init__(self, path: str) -> None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise TLMError(f"thinking file {p} not found", "write a JSONL of {sha1, thinking}")
        self.path = p
        self.table: dict[str, str] = {}
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = rec["sha1"] if "sha1" in rec else doc_sha1(rec["text"])
                self.table[key] = str(rec["thinking"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise TLMError(f"{p} line {i} is not a {{sha1|text, thinking}} record ({e})",
                               "fix that line") from e
        self._digest = hashlib.sha256(p.read_bytes()).hexdigest()[:12]

    def generate(self, docs: list[str]) -> list[str | None]:
        return [self.table.get(doc_sha1(d)) for d in docs]

    def fingerprint(self) -> str:
        return f"file:{self._digest}"


class LMGenerator:
    """Trajectories sampled from a trained tlm_jax causal LM (cached in a JSONL file)."""

    def __init__(self, runs: RunAccess, run_dir: str, prompt_tokens: int = 48, max_new: int = 48,
                 temperature: float = 0.6, top_p: float = 0.9, seed: int = 0,
                 cache_dir: str | None = None) -> None:
        self.run = runs.load(run_dir)
        self.gen = runs.sampler(self.run)
        room = self.gen.max_len - 1
        self.prompt_tokens = max(1, min(prompt_tokens, room - 1))
        # The key fields and their order are those of the sampler's settings record (cache keys
        # of trajectories sampled before stay valid).
        self.sampling = {"max_new": max(1, min(max_new, room - self.prompt_tokens)),
                         "temperature": temperature, "top_k": 0, "top_p": top_p, "greedy": False,
                         "seed": seed}
        key = hashlib.sha256(json.dumps([str(self.run.path), self.run.step, self.prompt_tokens,
                                         self.sampling]).encode()).hexdigest()[:16]
        self._fp = f"lm:{key}"
        root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.cache_path = root / "thinking" / f"{key}.jsonl"
        self.cache: dict[str, str] = {}
        if self.cache_path.is_file():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self.cache[rec["sha1"]] = rec["thinking"]

    def generate(self, docs: list[str]) -> list[str | None]:
        keys = [doc_sha1(d) for d in docs]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        if todo:
            tok = self.run.tokenizer
            prompts = [[self.run.special.cls, *tok.encode(docs[i], add_special_tokens=False).ids[
                :self.prompt_tokens]] for i in todo]
            outs = self.gen.sample(prompts, max_new=self.sampling["max_new"],
                                   temperature=self.sampling["temperature"],
                                   top_p=self.sampling["top_p"], seed=self.sampling["seed"])
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.cache_path, "a", encoding="utf-8") as f:
                for i, o in zip(todo, outs, strict=True):
                    text = tok.decode(o, skip_special_tokens=True)
                    self.cache[keys[i]] = text
                    f.write(json.dumps({"sha1": keys[i], "thinking": text}) + "\n")
        return [self.cache[k] or None for k in keys]

    def fingerprint(self) -> str:
        return self._fp


def get_generator(spec: str, runs: RunAccess | None = None, **options: Any) -> ThinkingGenerator:
    """``template`` | ``file:PATH`` | ``lm:RUN_DIR`` | ``module:attr`` (factory) -> generator.

    ``lm:`` samples from a trained run, reached through ``runs``.
    """
    if spec == "template":
        return TemplateGenerator()
    if spec.startswith("file:"):
        return FileGenerator(spec[5:])
    if spec.startswith("lm:"):
        return LMGenerator(require_runs(runs, "thinking generator=lm:RUN"), spec[3:], **options)
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)(**options)
        except (ImportError, AttributeError) as e:
            raise TLMError(f"cannot import thinking generator '{spec}': {e}",
                           "give module:attribute of a factory") from e
    raise TLMError(f"unknown thinking generator '{spec}'",
                   "use template, file:PATH, lm:RUN_DIR or module:attr")


def truncate_words(text: str, n: int) -> str:
    """The first ``n`` whitespace words of ``text`` (all of it when ``n <= 0``)."""
    if n <= 0:
        return text
    ws = text.split()
    return text if len(ws) <= n else " ".join(ws[:n])


def augment(doc: str, thinking: str | None, max_doc_words: int = 0) -> str:
    """``doc <think> thinking </think>`` (``doc`` unchanged when there is no trajectory)."""
    if not thinking or not thinking.strip():
        return doc
    return f"{truncate_words(doc, max_doc_words)} {THINK_OPEN} {thinking.strip()} {THINK_CLOSE}"


@register("thinking")
@dataclass
class ThinkingCLM(CLM):
    """Causal LM on a mix of plain and thinking-augmented documents."""

    extra_special: ClassVar[tuple[str, ...]] = (THINK_OPEN, THINK_CLOSE)
    _generator: ThinkingGenerator | None = field(default=None, repr=False)

    @property
    def generator(self) -> ThinkingGenerator:
        """The configured generator (built on first use: an LM generator loads a run)."""
        if self._generator is None:
            opts = dict(self.options.get("generator_options", {}) or {})
            self._generator = get_generator(str(self.options.get("generator", "template")), self.runs,
                                            **opts)
        return self._generator

    @property
    def ratio(self) -> float:
        return float(self.options.get("ratio", 0.5))

    def chosen(self, doc: str) -> bool:
        """Whether ``doc`` is augmented (hash of seed and text below ``ratio``)."""
        return unit_hash(int(self.options.get("seed", 0)), doc) < self.ratio

    def prepare_documents(self, texts: list[str]) -> list[str]:
        idx = [i for i, t in enumerate(texts) if self.chosen(t)]
        out = list(texts)
        if idx:
            traj = self.generator.generate([texts[i] for i in idx])
            cap = int(self.options.get("max_doc_words", 0))
            for i, t in zip(idx, traj, strict=True):
                out[i] = augment(texts[i], t, cap)
        return out

    def prepare_document(self, text: str) -> str:
        return self.prepare_documents([text])[0]

    def document_key(self) -> str:
        return f"{super().document_key()}|{self.generator.fingerprint()}"
