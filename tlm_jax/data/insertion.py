"""Train-Once-Answer-All: experiments' sequences written into the training stream.

Bordt & Pawelczyk ("Train Once, Answer All", arXiv 2509.23383) run several data
experiments inside one pretraining run: each owns a few sequences (canaries,
facts, benchmark items) that overwrite the token stream at seeded positions, so
the number of training tokens does not change, and each has its own metric.

Here the stream is the sequence of training examples in training order: example
``k`` is row ``k % B`` of step ``k // B`` (``B`` = global batch), whatever the mesh
or process count. An experiment's sequence is written as ``[SEP] tokens [SEP]``
(the pipeline's document boundary, the paper's EOS wrapping) over the real tokens
of one example, at a seeded offset; each example holds at most one insertion, so
insertions never overlap, within or across experiments. ``random`` places them
anywhere in training, ``random-range`` only in steps ``[start_step, end_step)``.

Experiments are planned one at a time in name order, each from its own seeded
permutation of its range, skipping slots an earlier experiment took. An
experiment's slots are therefore the same in a run with all experiments and in a
run with it alone (except where two drew the same slot), which is what the
dependence test (CPDT, :mod:`tlm_jax.eval.interventions`) compares.

The file ``interventions.file`` is JSON: a list (or ``{"experiments": [...]}``) of
``{"name", "texts", "repetitions" (int or one per text), "mode", "start_step",
"end_step"}``; other keys (probes, controls) are kept for the metric code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grain
import numpy as np
from tokenizers import Tokenizer

from tlm_jax.data.tokenizer import SpecialTokens, encode
from tlm_jax.errors import TLMError

MODES = ("random", "random-range")


@dataclass(frozen=True)
class InsertionExperiment:
    """One experiment's intervention: its texts, how often each is inserted, and where."""

    name: str
    texts: tuple[str, ...]
    repetitions: tuple[int, ...]
    mode: str = "random"
    start_step: int = 0
    end_step: int = 0  # exclusive; 0 = the end of training
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "interventions file") -> InsertionExperiment:
        """Parse and check one experiment record."""
        name = str(d.get("name", ""))
        if not name:
            raise TLMError(f"an experiment in {where} has no name", "give every experiment a name")
        texts = d.get("texts")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip()
                                                                for t in texts):
            raise TLMError(f"experiment '{name}' in {where} needs a non-empty list of texts",
                           "set texts: [\"...\", ...]")
        reps = d.get("repetitions", 1)
        reps = [reps] * len(texts) if isinstance(reps, int) else list(reps)
        if len(reps) != len(texts) or not all(isinstance(r, int) and r >= 1 for r in reps):
            raise TLMError(f"experiment '{name}': repetitions must be an integer >= 1 or one per "
                           "text", "fix its repetitions")
        mode = str(d.get("mode", "random"))
        if mode not in MODES:
            raise TLMError(f"experiment '{name}': unknown mode '{mode}'",
                           f"use one of {', '.join(MODES)}")
        start, end = int(d.get("start_step", 0)), int(d.get("end_step", 0))
        if mode == "random" and (start or end):
            raise TLMError(f"experiment '{name}': start_step/end_step need mode random-range",
                           "set mode: random-range")
        if start < 0 or end < 0 or (end and end <= start):
            raise TLMError(f"experiment '{name}': step range [{start}, {end}) is empty",
                           "use 0 <= start_step < end_step (end_step 0 = end of training)")
        known = {"name", "texts", "repetitions", "mode", "start_step", "end_step"}
        return cls(name, tuple(texts), tuple(int(r) for r in reps), mode, start, end,
                   {k: v for k, v in d.items() if k not in known})

    @property
    def insertions(self) -> int:
        """Examples this experiment overwrites."""
        return int(sum(self.repetitions))

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (inverse of :meth:`from_dict`)."""
        return {"name": self.name, "texts": list(self.texts), "repetitions": list(self.repetitions),
                "mode": self.mode, "start_step": self.start_step, "end_step": self.end_step,
                **self.extra}


def load_experiments(path: str | Path) -> list[InsertionExperiment]:
    """Read an interventions file (JSON list or ``{"experiments": [...]}``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise TLMError(f"interventions file {p} not found", "point interventions.file at a JSON file")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise TLMError(f"{p} is not valid JSON ({e.msg} at line {e.lineno})", "fix the file") from e
    items = raw.get("experiments") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise TLMError(f"{p} holds no list of experiments", "write [{\"name\": ..., ...}, ...]")
    exps = [InsertionExperiment.from_dict(d, str(p)) for d in items]
    names = [e.name for e in exps]
    if len(set(names)) != len(names):
        raise TLMError(f"{p} names an experiment twice", "give every experiment its own name")
    return exps


def write_experiments(experiments: Sequence[InsertionExperiment], path: str | Path) -> Path:
    """Write an interventions file (atomic)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps({"experiments": [e.to_dict() for e in experiments]}, indent=1) + "\n")
    tmp.replace(p)
    return p


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def window(tokens: np.ndarray, special: SpecialTokens) -> np.ndarray:
    """The inserted form of a sequence: ``[SEP] tokens [SEP]``."""
    return np.concatenate([[special.sep], np.asarray(tokens, np.int32), [special.sep]]).astype(np.int32)


@dataclass
class InsertionPlan:
    """Which stream example gets which window. ``slots[e][t]`` = examples of text ``t`` of ``e``."""

    experiments: list[InsertionExperiment]
    windows: list[list[np.ndarray]]
    slots: list[list[np.ndarray]]
    stream_examples: int
    global_batch: int
    seed: int
    pad: int

    def __post_init__(self) -> None:
        self.lookup: dict[int, tuple[int, int]] = {}
        for e, per_text in enumerate(self.slots):
            for t, ks in enumerate(per_text):
                for k in ks:
                    self.lookup[int(k)] = (e, t)

    def offset(self, k: int, real: int, width: int) -> int:
        """Where in example ``k``'s ``real`` body tokens the window starts (seeded)."""
        room = real - width
        if room <= 0:
            return 0
        return int(np.random.default_rng((self.seed, int(k), 7)).integers(0, room + 1))

    def apply(self, k: int, example: np.ndarray) -> np.ndarray:
        """Example ``k`` of the stream with its insertion (if any) written in.

        ``example`` is ``[CLS] body [SEP] [PAD]...``. The window overwrites body tokens, so the
        example keeps its token count; a body shorter than the window is replaced by it
        (the only case where the count changes).
        """
        hit = self.lookup.get(int(k))
        if hit is None:
            return example
        w = self.windows[hit[0]][hit[1]]
        out = np.array(example, copy=True)
        real = int((out != self.pad).sum()) - 2
        if real >= len(w):
            o = 1 + self.offset(k, real, len(w))
            out[o:o + len(w)] = w
        else:
            out[1:] = self.pad
            out[1:1 + len(w)] = w
            out[1 + len(w)] = w[-1]  # [SEP] closes the example, as the pipeline's does
        return out

    def transform(self, ds: grain.MapDataset) -> grain.MapDataset:
        """``ds`` (the repeated, shuffled example stream) with the insertions applied."""
        return ds.map_with_index(_Apply(self))

    def summary(self) -> dict[str, Any]:
        """JSON-able record of the plan (written to ``insertions.json`` of the run)."""
        return {"seed": self.seed, "stream_examples": self.stream_examples,
                "global_batch": self.global_batch,
                "experiments": [
                    {"name": e.name, "mode": e.mode, "start_step": e.start_step,
                     "end_step": e.end_step, "texts": len(e.texts),
                     "repetitions": list(e.repetitions), "insertions": e.insertions,
                     "window_tokens": [int(len(w)) for w in ws],
                     "slots": [[int(k) for k in ks] for ks in sl]}
                    for e, ws, sl in zip(self.experiments, self.windows, self.slots, strict=True)]}


class _Apply(grain.transforms.MapWithIndex):
    """Grain transform: ``(index, example) -> example with its insertion``."""

    def __init__(self, plan: InsertionPlan) -> None:
        self.plan = plan

    def map_with_index(self, index: int, element: np.ndarray) -> np.ndarray:
        return self.plan.apply(index, element)


def plan_insertions(experiments: Sequence[InsertionExperiment], sequences: Sequence[Sequence[np.ndarray]],
                    special: SpecialTokens, *, steps: int, global_batch: int, max_len: int,
                    seed: int) -> InsertionPlan:
    """Place every experiment's windows in the stream of ``steps * global_batch`` examples.

    ``sequences[e][t]`` are the token ids of text ``t`` of experiment ``e``.
    """
    total = steps * global_batch
    body = max_len - 2
    claimed: set[int] = set()
    by_name = sorted(range(len(experiments)), key=lambda i: experiments[i].name)
    windows: list[list[np.ndarray]] = [[] for _ in experiments]
    slots: list[list[np.ndarray]] = [[] for _ in experiments]
    for i in by_name:
        e = experiments[i]
        windows[i] = [window(s, special) for s in sequences[i]]
        for t, w in enumerate(windows[i]):
            if len(w) > body:
                raise TLMError(f"experiment '{e.name}': text {t} is {len(w) - 2} tokens, longer "
                               f"than an example holds ({body - 2} with its two [SEP])",
                               "shorten the text or raise data.max_len")
        end = (e.end_step or steps)
        if e.start_step >= steps or end > steps:
            raise TLMError(f"experiment '{e.name}': step range [{e.start_step}, {end}) is outside "
                           f"the run's {steps} steps", "fix start_step/end_step")
        lo, hi = e.start_step * global_batch, end * global_batch
        rng = np.random.default_rng((seed, _name_seed(e.name)))
        free = [k for k in (lo + rng.permutation(hi - lo)).tolist() if k not in claimed]
        if len(free) < e.insertions:
            raise TLMError(f"experiment '{e.name}' needs {e.insertions} insertions but its range "
                           f"has {len(free)} free examples", "lower repetitions or widen the range")
        take = free[: e.insertions]
        claimed.update(take)
        cuts = np.cumsum((0, *e.repetitions))
        slots[i] = [np.sort(np.asarray(take[cuts[t]:cuts[t + 1]], np.int64))
                    for t in range(len(e.texts))]
    return InsertionPlan(list(experiments), windows, slots, total, global_batch, seed, special.pad)


def build_insertions(path: str, tokenizer: Tokenizer, special: SpecialTokens, *, steps: int,
                     global_batch: int, max_len: int, seed: int) -> InsertionPlan | None:
    """The plan of ``interventions.file`` for a run (``None`` when no file is set)."""
    if not path:
        return None
    exps = load_experiments(path)
    seqs = [encode(tokenizer, list(e.texts)) for e in exps]
    for e, ss in zip(exps, seqs, strict=True):
        for t, s in enumerate(ss):
            if len(s) == 0:
                raise TLMError(f"experiment '{e.name}': text {t} has no tokens", "give it some text")
    return plan_insertions(exps, seqs, special, steps=steps, global_batch=global_batch,
                           max_len=max_len, seed=seed)


__all__ = ["InsertionExperiment", "InsertionPlan", "build_insertions", "load_experiments",
           "plan_insertions", "window", "write_experiments"]
