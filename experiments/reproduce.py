"""Regenerate every experiment's report, then the README's experiment tables, in one command.

    python -m experiments.reproduce --preset cpu --workdir experiments/results \\
        [--runs-dir runs/reproduce-cpu] [--only a,b] [--dry-run] [--readme-only] [--fresh]

Experiments run one after another in :data:`EXPERIMENTS` order, all with one
``--runs-dir``, so a pretraining run several experiments use is trained once and
found finished by the others (``experiments.common.run_pretrain`` skips finished
runs and resumes interrupted ones; fine-tunes skip finished seeds). The order puts
the shared runs first: ``pretrain_gap``'s run is the tokenizer of ``data_size``
and ``soft_committee``, the base of ``continual`` and the ``mlm`` arm of
``objectives_compare``; ``token_overlap`` re-reads ``data_size``'s grid;
``spdf`` reuses ``sltrain``'s dense run and ``curation`` ``ingenious``'s
full-data run. A state file in the runs directory records each finished
experiment, so a restart after an interruption skips those whole and resumes the
first unfinished one where its sub-runs stopped (``--fresh`` ignores the file).

Then every report gets the plateau guard and budget lines (:mod:`experiments.guard`)
and the README blocks between ``<!-- reproduce:NAME -->`` markers are rewritten
from the ``report.json`` files (:mod:`experiments.readme_tables`). ``--readme-only``
does only that: it trains nothing. A report whose runs' token caches are gone
(committed results) is judged against the unigram loss of the preset's reference
corpus (built once into the token cache, ~40 s for the cpu preset's).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import jax

from experiments import common as C
from experiments import guard
from experiments import readme_tables as RT
from experiments.reproduce_plan import planned_runs
from tlm_jax.config import load_config
from tlm_jax.data.corpus import prepare_corpus
from tlm_jax.errors import TLMError
from tlm_jax.eval import plateau as PL

REPO = Path(__file__).resolve().parent.parent
STATE_FILE = "reproduce-state.json"
RUN_HEADER = "--- experiments.reproduce:"  # starts each invocation's part of a log


@dataclass(frozen=True)
class Experiment:
    """One study: its module, which presets it has, and whose models it reports on."""

    name: str
    presets: Callable[[], set[str]] | None = None  # None: every experiments.common preset
    borrow_models_from: str | None = None  # report that holds the runs this one reuses


def _module_presets(module: str, attr: str) -> Callable[[], set[str]]:
    return lambda: set(getattr(importlib.import_module(module), attr))


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment("pretrain_gap"),
    Experiment("data_size"),
    Experiment("token_overlap", borrow_models_from="data_size"),
    Experiment("soft_committee"),
    Experiment("continual", _module_presets("experiments.continual", "SETTINGS")),
    Experiment("objectives_compare"),
    Experiment("sltrain"),
    Experiment("spdf"),
    Experiment("ingenious"),
    Experiment("curation"),
    Experiment("toaa", _module_presets("experiments.toaa_probes", "SETTINGS")),
    Experiment("conditional_training", _module_presets("experiments.conditional_training", "PRESETS")),
)
BY_NAME = {e.name: e for e in EXPERIMENTS}


def supported(exp: Experiment, preset: str) -> bool:
    """Whether ``exp`` has settings for ``preset``."""
    return preset in (exp.presets() if exp.presets else set(C.PRESETS))


def select(only: str | None) -> list[Experiment]:
    """The experiments to run, in :data:`EXPERIMENTS` order (``--only a,b`` keeps a and b)."""
    if not only:
        return list(EXPERIMENTS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    bad = [n for n in names if n not in BY_NAME]
    if bad:
        raise TLMError(f"unknown experiment(s) {', '.join(bad)} in --only",
                       f"use names from: {', '.join(BY_NAME)}")
    return [e for e in EXPERIMENTS if e.name in names]


# ----------------------------------------------------------------------------- state


def load_state(runs: Path) -> dict[str, Any]:
    """The state file (``{"experiments": {name: record}}``; empty when absent or unreadable)."""
    try:
        return json.loads((runs / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {"experiments": {}}


def save_state(runs: Path, state: dict[str, Any]) -> None:
    """Write the state file atomically (an interruption never leaves half of it)."""
    runs.mkdir(parents=True, exist_ok=True)
    tmp = runs / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, runs / STATE_FILE)


def run_key(preset: str, workdir: Path, seeds: str | None, tasks: str | None) -> dict[str, Any]:
    """What a finished record must match to be skipped (other settings redo the experiment)."""
    return {"preset": preset, "workdir": str(workdir.resolve()), "seeds": seeds, "tasks": tasks}


def finished(state: dict[str, Any], name: str, key: dict[str, Any], workdir: Path) -> bool:
    """``name`` finished earlier with the same settings and its report is still there."""
    rec = state.get("experiments", {}).get(name)
    return bool(rec and rec.get("key") == key and (workdir / name / "report.json").is_file())


# ----------------------------------------------------------------------------- running


class _Tee:
    """A stream writing to several streams (the terminal and the experiment's log file)."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


@contextlib.contextmanager
def logged(path: Path) -> Iterator[None]:
    """Copy stdout (the experiments' progress lines) into ``path`` while running."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f, contextlib.redirect_stdout(_Tee(sys.stdout, f)):
        print(f"{RUN_HEADER} {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
        yield


def experiment_args(name: str, workdir: Path, preset: str, runs: Path, seeds: str | None,
                    tasks: str | None) -> argparse.Namespace:
    """The arguments ``python -m experiments.<name>`` would parse, defaults included."""
    mod = importlib.import_module(f"experiments.{name}")
    if name == "conditional_training":  # its own parser: no --seeds/--tasks, a sampling --seed
        return argparse.Namespace(workdir=str(workdir), preset=preset, runs_dir=str(runs), seed=0)
    extra = getattr(mod, "_extra", None) or getattr(mod, "_extra_args", None)
    argv = ["--workdir", str(workdir), "--preset", preset, "--runs-dir", str(runs)]
    argv += ["--seeds", seeds] if seeds else []
    argv += ["--tasks", tasks] if tasks else []
    return C.build_parser(mod.__doc__ or "", extra).parse_args(argv)


def run_experiment(name: str, workdir: Path, preset: str, runs: Path, seeds: str | None,
                   tasks: str | None) -> None:
    """Run one experiment in this process (its sub-runs skip or resume by themselves)."""
    mod = importlib.import_module(f"experiments.{name}")
    mod.run(experiment_args(name, workdir / name, preset, runs, seeds, tasks))


# ----------------------------------------------------------------------------- README


class Baselines:
    """Unigram baselines of reference corpora, computed once per corpus (for old reports)."""

    def __init__(self) -> None:
        self.cache: dict[str, dict[str, Any] | None] = {}

    def reference(self, name: str, preset: str) -> dict[str, Any] | None:
        """The baseline of the corpus experiment ``name`` pretrains on under ``preset``."""
        if name == "conditional_training":
            ct = importlib.import_module("experiments.conditional_training")
            if preset not in ct.PRESETS:
                return None
            label = f"conditional_training's {preset} corpus"
            overrides = ct.run_overrides(ct.PRESETS[preset], "clm")
        elif preset in C.PRESETS:
            spec = C.pretrain_spec(C.PRESETS[preset])
            label, overrides = f"the {preset} preset's corpus ({spec.name})", list(spec.overrides)
        else:
            return None
        if label not in self.cache:
            self.cache[label] = _corpus_unigram(overrides, label)
        return self.cache[label]


def _corpus_unigram(overrides: list[str], label: str) -> dict[str, Any] | None:
    try:
        corpus = prepare_corpus(load_config(None, overrides).data, progress=False,
                                log=lambda _: None)
        u = PL.cache_unigram(corpus.info["cache_dir"], corpus.special.all,
                             corpus.special.vocab_size)
    except TLMError as e:
        C.log(f"unigram baseline of {label} unavailable: {e.one_line()}")
        return None
    return {**u, "source": f"reference: {label}; the run's own token cache is gone"}


def _needs_fallback(models: dict[str, Any]) -> bool:
    return any((m.get("unigram") or {}).get("unigram_loss") is None for m in models.values())


def refresh_reports(names: list[str], workdir: Path, preset: str, baselines: Baselines
                    ) -> dict[str, dict[str, Any]]:
    """Re-apply the plateau guard to each existing report; returns ``{name: report data}``."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        d = workdir / name
        if not (d / "report.json").is_file():
            continue
        data = json.loads((d / "report.json").read_text())
        borrowed = None
        src = BY_NAME[name].borrow_models_from
        if not guard.report_models(data) and src and (workdir / src / "report.json").is_file():
            borrowed = guard.report_models(json.loads((workdir / src / "report.json").read_text()))
        models = guard.report_models(data) or borrowed or {}
        fallback = None
        if _needs_fallback(models):
            rp = data.get("preset")
            fallback = baselines.reference(name, rp if isinstance(rp, str) and rp in C.PRESETS
                                           else preset)
        out[name] = guard.guard_report(d, fallback=fallback, borrowed=borrowed)
    return out


def update_readme(readme: Path, reports: dict[str, dict[str, Any]], names: list[str],
                  workdir: Path) -> tuple[list[str], list[str]]:
    """Rewrite the README blocks of ``names``; returns (blocks written, names without markers)."""
    try:
        where = os.path.relpath(workdir.resolve(), readme.resolve().parent)
    except ValueError:  # another drive (Windows): link absolutely
        where = str(workdir.resolve())
    blocks = {n: RT.block(n, reports.get(n), f"{where}/{n}") for n in names}
    text, done, missing = RT.rewrite_readme(readme.read_text(), blocks)
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, readme)
    return done, missing


# ----------------------------------------------------------------------------- command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--preset", default="cpu", help=f"one of {', '.join(sorted(C.PRESETS))}")
    p.add_argument("--workdir", default="experiments/results",
                   help="reports go to WORKDIR/<experiment>/")
    p.add_argument("--runs-dir", default=None,
                   help="shared sub-runs and the state file (default runs/reproduce-<preset>)")
    p.add_argument("--only", default=None, help="comma-separated experiments (default: all)")
    p.add_argument("--seeds", default=None, help="fine-tuning seeds passed to every experiment")
    p.add_argument("--tasks", default=None, help="tasks passed to every experiment that takes them")
    p.add_argument("--dry-run", action="store_true", help="print the plan; run and write nothing")
    p.add_argument("--readme-only", action="store_true",
                   help="train nothing: guard the existing reports and rewrite the README tables")
    p.add_argument("--readme", default=str(REPO / "README.md"), help="the README to rewrite")
    p.add_argument("--no-readme", action="store_true", help="leave the README alone")
    p.add_argument("--fresh", action="store_true", help="ignore the state file of finished experiments")
    return p.parse_args(argv)


def print_plan(exps: list[Experiment], args: argparse.Namespace, workdir: Path, runs: Path) -> None:
    """What a run would do: each experiment's state and pretraining runs (shared ones once)."""
    state = {} if args.fresh else load_state(runs)
    key = run_key(args.preset, workdir, args.seeds, args.tasks)
    seen: dict[str, str] = {}
    print(f"plan: preset {args.preset}, reports in {workdir}, sub-runs in {runs}")
    for e in exps:
        if not supported(e, args.preset):
            print(f"- {e.name}: skipped (no {args.preset!r} settings)")
            continue
        if args.readme_only:
            have = (workdir / e.name / "report.json").is_file()
            print(f"- {e.name}: report {'present' if have else 'missing'}")
            continue
        status = "finished earlier (state file)" if finished(state, e.name, key, workdir) else "to run"
        print(f"- {e.name}: {status}")
        for label, wd, steps in planned_runs(e.name, args.preset, runs):
            if label in seen:
                print(f"    pretrain {label}: shared with {seen[label]}")
                continue
            seen[label] = e.name
            done = steps and C.pretrain_done(wd, steps)
            print(f"    pretrain {label} ({steps:,} steps): {'finished' if done else 'to train'}")
        if e.name == "toaa":
            print("    (+ the insertion and CPDT runs, named at run time)")
    if not args.no_readme:
        print(f"then: plateau guard on every report, README tables in {args.readme}")


def main(argv: list[str] | None = None) -> int:
    """The command; returns the exit status (1 when an experiment failed)."""
    args = parse_args(argv)
    exps = select(args.only)
    known = set().union(*(e.presets() if e.presets else set(C.PRESETS) for e in EXPERIMENTS))
    if args.preset not in known:
        raise TLMError(f"unknown preset {args.preset!r}", f"use one of: {', '.join(sorted(known))}")
    workdir = Path(args.workdir)
    runs = Path(args.runs_dir or f"runs/reproduce-{args.preset}")
    if args.dry_run:
        print_plan(exps, args, workdir, runs)
        return 0
    failed: list[str] = []
    if not args.readme_only:
        failed = run_all(exps, args, workdir, runs)
    reports = refresh_reports([e.name for e in exps], workdir, args.preset, Baselines())
    flagged = [n for n, r in reports.items() if (r.get("plateau") or {}).get("flagged")]
    for n, r in reports.items():
        C.log(f"{n}: {guard.summary_line(r)}")
    C.log(f"plateau guard flags {len(flagged)} of {len(reports)} reports: {', '.join(flagged) or 'none'}")
    if not args.no_readme:
        done, missing = update_readme(Path(args.readme), reports, [e.name for e in exps], workdir)
        C.log(f"README {args.readme}: rewrote {len(done)} table(s)"
              + (f"; no markers for {', '.join(missing)}" if missing else ""))
    if failed:
        C.log(f"FAILED: {', '.join(failed)} (fix the cause and run the command again: finished "
              "work is skipped)")
    return 1 if failed else 0


def run_all(exps: list[Experiment], args: argparse.Namespace, workdir: Path, runs: Path) -> list[str]:
    """Run every experiment not finished earlier; returns the names that failed."""
    if jax.config.jax_compilation_cache_dir is None:  # a caller's (e.g. the tests') cache wins
        C.enable_compile_cache(runs)
    state = {"experiments": {}} if args.fresh else load_state(runs)
    key = run_key(args.preset, workdir, args.seeds, args.tasks)
    failed = []
    for e in exps:
        if not supported(e, args.preset):
            C.log(f"{e.name}: skipped (no {args.preset!r} settings in this experiment)")
            continue
        if finished(state, e.name, key, workdir):
            C.log(f"{e.name}: finished earlier (state file {runs / STATE_FILE}), skipped")
            continue
        C.log(f"=== {e.name} ===")
        t0 = time.perf_counter()
        try:
            with logged(runs / "logs" / f"{e.name}.log"):
                run_experiment(e.name, workdir, args.preset, runs, args.seeds, args.tasks)
        except TLMError as err:
            C.log(f"{e.name}: FAILED: {err.one_line()}")
            failed.append(e.name)
            continue
        report = json.loads((workdir / e.name / "report.json").read_text())
        state.setdefault("experiments", {})[e.name] = {
            "key": key, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": round(time.perf_counter() - t0, 1),
            "plateau": (report.get("plateau") or {}).get("flagged")}
        save_state(runs, state)
        C.log(f"{e.name}: done in {time.perf_counter() - t0:.0f}s; {guard.summary_line(report)}")
    return failed


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TLMError as e:
        print(f"error: {e.one_line()}", file=sys.stderr)
        sys.exit(2)
