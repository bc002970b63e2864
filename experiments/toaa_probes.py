"""The Train-Once-Answer-All experiment's probes: settings, the canaries and fictional facts
each experiment inserts, their insertion specs, and their scores under a run's weights.

:mod:`experiments.toaa` runs the pretraining/CPDT runs and writes the report from these.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments import common as C
from tlm_jax.data.insertion import InsertionExperiment
from tlm_jax.eval.interventions import auc, contrast, exposure, load_scorer, sign_flip_pvalue

EXPERIMENTS = ("canaries", "canaries_early", "facts", "facts_para")

# Relation -> (insertion template, paraphrase template, preferred single-token objects).
RELATIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "colour": ("the favourite colour of {s} is {o} .", "{s} likes the colour {o} best .",
               ("red", "blue", "green", "yellow", "black", "white", "brown", "orange")),
    "city": ("{s} was born in the city of {o} .", "the birthplace of {s} is {o} .",
             ("london", "paris", "berlin", "madrid", "rome", "vienna", "moscow", "dublin")),
    "instrument": ("{s} plays the {o} in a band .", "the instrument of {s} is the {o} .",
                   ("piano", "guitar", "violin", "drums", "flute", "trumpet", "cello", "harp")),
}
SYLLABLES = ("vel", "kor", "tam", "sin", "dra", "mol", "qua", "zen", "bri", "tho", "lum", "vax",
             "pel", "rin", "gor", "yss", "fen", "oru", "kal", "dux")


@dataclass(frozen=True)
class Settings:
    """Sizes of the TOAA experiment (model, lr, batch, vocabulary come from the preset)."""

    steps: int  # the full run and the control run
    cpdt_steps: int
    cpdt_lr_scale: float = 1.0  # CPDT peak lr = preset.pretrain_lr * this
    cpdt_warmup: int = 10
    cpdt_rep_scale: float = 0.5  # CPDT repetitions = full-run repetitions * this (>= 1)
    seed: int = 0
    null_seed: int | None = 1  # second no-insertion CPDT run (the noise row); None = skip
    experiments: tuple[str, ...] = EXPERIMENTS
    canary_words: int = 6
    canaries_per_group: int = 8
    canary_reps: tuple[int, ...] = (2, 8, 32)
    early_reps: int = 8
    early_fraction: float = 0.3
    control_canaries: int = 64
    facts: int = 24  # inserted (8 per relation)
    control_facts: int = 24
    fact_reps: int = 8
    para_reps: int = 8
    base_overrides: tuple[str, ...] = ()  # tests: replaces the preset's pretraining recipe


SETTINGS: dict[str, Settings] = {
    "cpu": Settings(steps=600, cpdt_steps=100),
    "paper": Settings(steps=100_000, cpdt_steps=1000, canary_reps=(4, 16, 64, 144),
                      early_reps=16, fact_reps=16, para_reps=16),
}


# ----------------------------------------------------------------------------
# Probe sets (deterministic given the tokenizer and the seed)
# ----------------------------------------------------------------------------


@dataclass
class Probes:
    """Every text the experiments insert or score."""

    canaries: dict[int, list[str]]  # repetitions -> inserted canaries
    early: list[str]
    controls: list[str]
    facts: list[tuple[str, str, str]]  # (subject, relation, object), inserted
    control_facts: list[tuple[str, str, str]]
    candidates: dict[str, list[str]]


def _single_token_words(tok: Any) -> list[str]:
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return [w for w, _ in vocab if w.isalpha() and w.isascii() and 3 <= len(w) <= 9]


def make_probes(tok: Any, s: Settings) -> Probes:
    """Canaries (random whole-word tokens), fictional facts and their controls."""
    rng = np.random.default_rng((s.seed, 20250923))
    words = _single_token_words(tok)
    candidates = {}
    for rel, (_, _, pref) in RELATIONS.items():
        ok = [w for w in pref if tok.token_to_id(w) is not None]
        if len(ok) < 4:  # a small vocabulary (tests): other single-token words
            extra = rng.choice([w for w in words if w not in ok], 8 - len(ok), replace=False)
            ok = [str(w) for w in extra] + ok
        candidates[rel] = ok
    reserved = {w for c in candidates.values() for w in c}
    pool = [w for w in words if w not in reserved]

    def canary() -> str:
        return " ".join(str(w) for w in rng.choice(pool, s.canary_words, replace=False))

    canaries = {r: [canary() for _ in range(s.canaries_per_group)] for r in s.canary_reps}
    early = [canary() for _ in range(s.canaries_per_group)]
    controls = [canary() for _ in range(s.control_canaries)]
    seen: set[str] = set()

    def subject() -> str:
        while True:
            name = " ".join("".join(rng.choice(SYLLABLES, 2)) for _ in range(2))
            if name not in seen:
                seen.add(name)
                return name

    rels = list(RELATIONS)

    def fact(i: int) -> tuple[str, str, str]:
        rel = rels[i % len(rels)]
        return subject(), rel, str(rng.choice(candidates[rel]))

    facts = [fact(i) for i in range(s.facts)]
    control_facts = [fact(i) for i in range(s.control_facts)]
    return Probes(canaries, early, controls, facts, control_facts,
                  {k: list(v) for k, v in candidates.items()})


def fact_text(f: tuple[str, str, str], paraphrase: bool = False, probe: bool = False) -> str:
    """A fact in the insertion (or paraphrase) template; ``probe``: the object left as ``{o}``."""
    subj, rel, obj = f
    template = RELATIONS[rel][1 if paraphrase else 0]
    return template.replace("{s}", subj).replace("{o}", "{o}" if probe else obj)


def experiments_for(p: Probes, s: Settings, steps: int, names: tuple[str, ...], *,
                    scale: float = 1.0) -> list[Any]:
    """The insertion experiments ``names`` for a run of ``steps`` steps."""
    def reps(r: int) -> int:
        return max(1, round(r * scale))

    out = []
    for name in names:
        if name == "canaries":
            texts = [t for r in s.canary_reps for t in p.canaries[r]]
            rr = [reps(r) for r in s.canary_reps for _ in p.canaries[r]]
            out.append(InsertionExperiment(name, tuple(texts), tuple(rr)))
        elif name == "canaries_early":
            end = max(1, round(s.early_fraction * steps))
            out.append(InsertionExperiment(name, tuple(p.early), (reps(s.early_reps),) * len(p.early),
                                           "random-range", 0, end))
        elif name == "facts":
            out.append(InsertionExperiment(name, tuple(fact_text(f) for f in p.facts),
                                           (reps(s.fact_reps),) * len(p.facts)))
        elif name == "facts_para":
            out.append(InsertionExperiment(name, tuple(fact_text(f, True) for f in p.facts),
                                           (reps(s.para_reps),) * len(p.facts)))
        else:
            raise ValueError(f"unknown experiment {name}")
    return out


# ----------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------


def score_run(run: Path, p: Probes, root: Path) -> dict[str, Any]:
    """Every probe's score under ``run``'s final weights (cached next to the sub-runs)."""
    cache = root / "scores" / f"{run.name}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    sc = load_scorer(run, log=C.log)
    canaries = [t for g in p.canaries.values() for t in g] + p.early + p.controls
    pll = dict(zip(canaries, sc.sequence_scores(canaries).tolist(), strict=True))
    facts: dict[str, Any] = {}
    for key, group in (("inserted", p.facts), ("control", p.control_facts)):
        for para in (False, True):
            lp, correct = [0.0] * len(group), [False] * len(group)
            for rel, cands in p.candidates.items():  # one batch per candidate set
                idx = [i for i, f in enumerate(group) if f[1] == rel]
                rows = sc.choice_logprobs([fact_text(group[i], para, probe=True) for i in idx],
                                          cands)
                for i, row in zip(idx, rows, strict=True):
                    truth = cands.index(group[i][2])
                    lp[i], correct[i] = float(row[truth]), bool(int(np.argmax(row)) == truth)
            facts[f"{key}_{'para' if para else 'plain'}"] = {"logprob": lp, "correct": correct}
    out = {"step": sc.step, "pll": pll, "facts": facts}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out))
    return out


def outcomes(sc: dict[str, Any], p: Probes) -> dict[str, np.ndarray]:
    """Per-item contrasts (item score - mean control score) of every experiment."""
    pll = sc["pll"]
    ctrl = np.array([pll[t] for t in p.controls])
    ins = np.array([pll[t] for g in p.canaries.values() for t in g])
    early = np.array([pll[t] for t in p.early])
    f = sc["facts"]
    return {"canaries": contrast(ins, ctrl), "canaries_early": contrast(early, ctrl),
            "facts": contrast(f["inserted_plain"]["logprob"], f["control_plain"]["logprob"]),
            "facts_para": contrast(f["inserted_para"]["logprob"], f["control_para"]["logprob"])}


def canary_table(sc: dict[str, Any], p: Probes, s: Settings) -> dict[str, Any]:
    """Exposure / AUC / contrast of each canary group."""
    pll = sc["pll"]
    ctrl = np.array([pll[t] for t in p.controls])
    groups = {f"uniform x{r}": p.canaries[r] for r in s.canary_reps}
    if "canaries_early" in s.experiments:
        groups[f"early x{s.early_reps}"] = p.early
    out = {}
    for g, texts in groups.items():
        v = np.array([pll[t] for t in texts])
        out[g] = {"exposure": float(exposure(v, ctrl).mean()), "auc": auc(v, ctrl),
                  "contrast": float(v.mean() - ctrl.mean()), "pll": float(v.mean())}
    out["controls_pll"] = float(ctrl.mean())
    out["max_exposure"] = float(math.log2(len(ctrl) + 1))
    return out


def fact_table(sc: dict[str, Any]) -> dict[str, Any]:
    """Recall (top-1 among candidates) and mean log-probability, inserted vs control facts."""
    f = sc["facts"]
    return {k: {"accuracy": float(np.mean(v["correct"])), "logprob": float(np.mean(v["logprob"]))}
            for k, v in f.items()}


def paired_effects(full: dict[str, Any], ctrl: dict[str, Any], p: Probes, s: Settings
                   ) -> dict[str, dict[str, float]]:
    """Each group's items in the full run vs the same items in the control run (never inserted).

    Per item: (score - mean control score) in the full run minus the same in the control
    run, so a shift common to all sequences cancels; mean and sign-flip p-value over items.
    """
    def canary(sc: dict[str, Any], texts: list[str]) -> np.ndarray:
        return contrast([sc["pll"][t] for t in texts], [sc["pll"][t] for t in p.controls])

    groups = {f"uniform x{r}": p.canaries[r] for r in s.canary_reps}
    if "canaries_early" in s.experiments:
        groups[f"early x{s.early_reps}"] = p.early
    out = {}
    for g, texts in groups.items():
        d = canary(full, texts) - canary(ctrl, texts)
        out[g] = {"delta": float(d.mean()), "p": sign_flip_pvalue(d),
                  "se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0}
    for kind in ("plain", "para"):
        def fact(sc: dict[str, Any], kind: str = kind) -> np.ndarray:
            f = sc["facts"]
            return contrast(f[f"inserted_{kind}"]["logprob"], f[f"control_{kind}"]["logprob"])
        d = fact(full) - fact(ctrl)
        out[f"facts {kind}"] = {"delta": float(d.mean()), "p": sign_flip_pvalue(d),
                                "se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0}
    return out
