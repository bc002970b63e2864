"""Shared pieces of the experiments: presets, sub-run specs, skipping finished work, reports.

Everything here is composition of :mod:`tlm_jax` (``pretrain``, ``finetune``,
baselines, metrics); the experiments themselves only choose what to run and
how to tabulate it.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import matplotlib

from experiments import guard
from experiments.budget import environment as environment
from experiments.budget import pretrain_summary as pretrain_summary
from tlm_jax.config import load_config
from tlm_jax.errors import TLMError
from tlm_jax.tasks import TASKS, resolve_data_dir
from tlm_jax.tasks.finetune import finetune, load_finetune_config, paired_gap
from tlm_jax.train.loop import pretrain

WIKI_GLOB = "$TLM_DATA_DIR/wikipedia_en_excerpt/*.gz"


@dataclass(frozen=True)
class Preset:
    """Sizes of one preset (``cpu``: 2 CPU cores, minutes; ``paper``: the paper's sizes)."""

    name: str
    # Pretraining
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    deep_lr: float
    warmup_steps: int
    vocab_size: int
    max_len: int
    shallow_model: tuple[str, ...]  # model.* overrides of the shallow (BERT-1-like) model
    deep_model: tuple[str, ...]  # model.* overrides of the deep (BERT-6-like) model
    pretrain_extra: tuple[str, ...] = ()  # further overrides of every pretraining run
    wiki_paths: tuple[str, ...] = (WIKI_GLOB,)
    gap_docs: int = 15000  # pretraining subset of pretrain_gap / the committee members
    data_sizes: tuple[int, ...] = (500, 1500, 5000, 15000)
    # Fine-tuning
    seeds: tuple[int, ...] = (0, 1, 2)
    tasks: dict[str, dict[str, int]] = field(default_factory=dict)
    size_tasks: tuple[str, ...] = ("dbpedia",)  # tasks of data_size
    committee_tasks: tuple[str, ...] = ("ag_news",)
    committee_k: int = 2
    committee_steps: int = 0  # pretraining steps of members and deep model; 0 = pretrain_steps
    size_steps: int = 0  # pretraining steps of every data_size run; 0 = pretrain_steps
    finetune: tuple[str, ...] = ()  # finetune overrides shared by every fine-tune
    overlap_k: int = 5  # a type "is known" when it occurs >= k times in the corpus
    latency_batches: tuple[int, ...] = (1, 256)
    latency_repeats: int = 20


PRESETS: dict[str, Preset] = {
    # One layer / six layers at hidden 128 (the `tiny` shape), trained for minutes.
    # Probed on AG News (linear probe on frozen mean-pooled features, 100 labels/class;
    # random features: 43 %): 1,000 steps with 15 % masking 43 %, with 40 % masking 50 %,
    # 2,000 steps 56 %; full fine-tuning 49 % -> 62 % (random-init twin 71 %). Below that the
    # pretrained embeddings are large but uninformative and *hurt* fine-tuning. So: 40 %
    # masking (2.7x the predictions per step), no dropout and Adam b2 0.98 (short budgets,
    # as in cramming), packed documents, and as many steps as the hour allows.
    # Mean pooling: MLM-only pretraining never trains the [CLS] output.
    "cpu": Preset(
        name="cpu",
        pretrain_steps=8000,
        pretrain_batch=32,
        pretrain_lr=3e-3,
        deep_lr=1.5e-3,
        warmup_steps=200,
        vocab_size=8192,
        max_len=128,
        shallow_model=("model.preset=tiny", "model.layers=1"),
        deep_model=("model.preset=tiny", "model.layers=6"),
        seeds=(0, 1, 2, 3, 4),  # fine-tunes are seconds; five seeds narrow the CI
        pretrain_extra=("objective.mask_rate=0.4", "model.dropout=0.0",
                        "model.attention_dropout=0.0", "optim.b2=0.98", "data.packing=pack"),
        # Few labels per class (where pretraining matters most) and texts cut to 64 tokens:
        # a fine-tune is about a minute on two shared cores.
        tasks={
            "ag_news": {"train_per_class": 100, "test_per_class": 250},
            "dbpedia": {"train_per_class": 30, "test_per_class": 50},
            "fewrel": {"train_per_class": 40, "test_per_class": 40},
        },
        finetune=("optim.lr=1e-3", "optim.weight_decay=0.01", "train.batch_size=16",
                  "train.epochs=15", "train.patience=3", "train.metric=loss",
                  "task.val_fraction=0.1", "task.max_len=64", "train.eval_batch_size=128",
                  "head.pooling=mean"),
        # The six-layer model trains ~8x slower per step than the one-layer one here, so the
        # committee comparison uses its own, shorter budget (same for members and deep model).
        committee_steps=1500,
        size_steps=2000,
    ),
    # The paper's shapes and splits (for an accelerator; not run on CPU).
    "paper": Preset(
        name="paper",
        pretrain_steps=100_000,
        pretrain_batch=256,
        pretrain_lr=1e-4,
        deep_lr=1e-4,
        warmup_steps=10_000,
        vocab_size=30522,
        max_len=128,
        shallow_model=("model.preset=bert-1",),
        deep_model=("model.preset=bert-6",),
        gap_docs=0,  # 0 = the whole corpus
        data_sizes=(10_000, 30_000, 100_000, 300_000),
        seeds=(0, 1, 2, 3, 4),
        tasks={
            "ag_news": {"train_per_class": 1000, "test_per_class": 1000},
            "dbpedia": {"train_per_class": 100, "test_per_class": 100},
            "fewrel": {"train_per_class": 630, "test_per_class": 70},
        },
        size_tasks=("ag_news", "dbpedia", "fewrel"),
        committee_tasks=("ag_news", "dbpedia", "fewrel"),
        committee_k=3,
        # configs/finetune-paper.yaml: AdamW 5e-5, wd 0.01, batch 32, linear decay without
        # warmup, 50 epochs, no early stopping, no validation carve-out.
        finetune=("optim.lr=5e-5", "optim.weight_decay=0.01", "optim.eps=1e-8",
                  "optim.warmup_steps=0", "optim.clip_norm=0.0", "train.batch_size=32",
                  "train.epochs=50", "train.patience=0", "task.val_fraction=0.0"),
        latency_repeats=50,
    ),
}


def add_common_args(p: argparse.ArgumentParser) -> None:
    """``--workdir``, ``--preset``, ``--runs-dir``, ``--tasks``, ``--seeds``."""
    p.add_argument("--workdir", required=True, help="where report.md/report.json/plots go")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--runs-dir", default=None,
                   help="sub-run directory (default WORKDIR/runs); share it between experiments")
    p.add_argument("--seeds", default=None, help="comma-separated fine-tuning seeds")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: the preset's)")


def parse_seeds(text: str | None, default: Sequence[int]) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``."""
    if not text:
        return list(default)
    return [int(s) for s in str(text).split(",") if s.strip()]


def runs_dir(args: argparse.Namespace) -> Path:
    """The sub-run root."""
    return Path(args.runs_dir) if args.runs_dir else Path(args.workdir) / "runs"


def log(msg: str) -> None:
    """Timestamped progress line (flushed, so ``nohup`` logs are live)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------
# Pretraining sub-runs
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainSpec:
    """One pretraining sub-run: a directory name and the ``tlm pretrain`` overrides."""

    name: str
    overrides: tuple[str, ...]

    def workdir(self, root: Path) -> Path:
        return Path(root) / "pretrain" / self.name


def pretrain_spec(preset: Preset, *, deep: bool = False, num_docs: int | None = None,
                  seed: int = 0, tokenizer: str | None = None, steps: int | None = None
                  ) -> PretrainSpec:
    """The pretraining run of the shallow (or ``deep``) model on ``num_docs`` random documents.

    ``tokenizer``: a tokenizer.json to reuse (so runs on different subsets share one
    vocabulary); ``None`` trains one on the subset itself.
    """
    docs = preset.gap_docs if num_docs is None else num_docs
    model = preset.deep_model if deep else preset.shallow_model
    lr = preset.deep_lr if deep else preset.pretrain_lr
    paths = json.dumps(list(preset.wiki_paths))
    ov = [*model,
          "data.source=wikiextractor", f"data.paths={paths}",
          f"data.vocab_size={preset.vocab_size}", f"data.max_len={preset.max_len}",
          f"model.max_len={preset.max_len}",
          f"train.steps={steps or preset.pretrain_steps}",
          f"train.batch_size={preset.pretrain_batch}",
          f"train.seed={seed}", f"optim.lr={lr}", f"optim.warmup_steps={preset.warmup_steps}",
          "train.eval_every=100", "train.eval_batches=5", "train.checkpoint_every=100",
          "train.keep_checkpoints=1", "train.progress=false", "train.log_every=50",
          *preset.pretrain_extra]
    if docs:
        ov += ["data.subset=random", f"data.num_docs={docs}"]
    if tokenizer:
        ov.append(f"data.tokenizer={tokenizer}")
    kind = "deep" if deep else "shallow"
    name = f"{preset.name}-{kind}-docs{docs or 'all'}-s{seed}"
    if tokenizer:
        name += "-tok" + hashlib.sha256(tokenizer.encode()).hexdigest()[:6]
    # The recipe hash keeps a changed recipe from resuming an older run of the same shape.
    name += "-r" + hashlib.sha256(json.dumps(ov[:len(ov) - bool(tokenizer)]).encode()
                                  ).hexdigest()[:6]
    return PretrainSpec(name, tuple(ov))


def pretrain_done(workdir: Path, steps: int) -> bool:
    """A finished pretraining run: ``summary.json`` with the full step count."""
    p = Path(workdir) / "summary.json"
    if not p.is_file():
        return False
    try:
        return int(json.loads(p.read_text()).get("steps", -1)) == steps and \
            (Path(workdir) / "checkpoints" / str(steps)).is_dir()
    except (ValueError, OSError):
        return False


def run_pretrain(spec: PretrainSpec, root: Path, steps: int) -> Path:
    """Pretrain (or resume, or skip when finished) ``spec`` under ``root``; returns its workdir."""
    wd = spec.workdir(root)
    if pretrain_done(wd, steps):
        log(f"pretrain {spec.name}: finished earlier, skipped")
        return wd
    wd.mkdir(parents=True, exist_ok=True)
    # Several experiments may share a runs dir: one process trains a run, the others wait.
    with open(wd.parent / f".{spec.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if pretrain_done(wd, steps):
            log(f"pretrain {spec.name}: finished by another process, skipped")
            return wd
        log(f"pretrain {spec.name}: start/resume")
        cfg = load_config(None, list(spec.overrides))
        t0 = time.perf_counter()
        pretrain(cfg, wd, log=lambda m: log(f"  {m}"))
        log(f"pretrain {spec.name}: done in {time.perf_counter() - t0:.0f}s")
    return wd


def gap_pretrain(preset: Preset, root: Path) -> tuple[PretrainSpec, Path]:
    """The shallow model on ``gap_docs`` documents with its own tokenizer (trained on them)."""
    spec = pretrain_spec(preset)
    return spec, run_pretrain(spec, root, preset.pretrain_steps)


def shared_tokenizer(preset: Preset, root: Path) -> str:
    """The tokenizer of the gap run, reused by every other run so all share one vocabulary."""
    return str(gap_pretrain(preset, root)[1] / "tokenizer.json")


def size_spec(preset: Preset, num_docs: int, tokenizer: str) -> PretrainSpec:
    """The pretraining run on ``num_docs`` documents with the shared tokenizer.

    With the full budget the ``gap_docs`` size *is* the gap run (its tokenizer was
    trained on that very subset, so the vocabulary is the same file). The cpu
    preset gives these runs a shorter budget (``size_steps``); its largest size is
    then the same run as committee member 0 only when ``committee_steps`` equals
    ``size_steps`` (in the cpu preset they differ: 1,500 vs 2,000 steps).
    """
    steps = size_steps(preset)
    if num_docs == preset.gap_docs and steps == preset.pretrain_steps:
        return pretrain_spec(preset)
    return pretrain_spec(preset, num_docs=num_docs, tokenizer=tokenizer, steps=steps)


def size_steps(preset: Preset) -> int:
    """Pretraining steps of the data_size runs."""
    return preset.size_steps or preset.pretrain_steps


# ----------------------------------------------------------------------------
# Fine-tuning sub-runs
# ----------------------------------------------------------------------------


def available_tasks(names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The tasks whose data can be loaded, and why the others cannot."""
    ok, missing = [], {}
    for t in names:
        if t == "synthetic":  # generated by the package, needs no data directory
            ok.append(t)
            continue
        try:
            root = resolve_data_dir()
            folder = {"ag_news": "ag_news", "dbpedia": "dbpedia_14", "fewrel": "fewrel"}.get(t, t)
            if t not in TASKS or not (root / folder).is_dir():
                raise TLMError(f"no data folder {root / folder}", "")
            ok.append(t)
        except TLMError as e:
            missing[t] = e.cause
    return ok, missing


def finetune_overrides(preset: Preset, task: str) -> list[str]:
    """The fine-tuning settings of ``task`` under ``preset`` (sub-runs skip checkpoints)."""
    opts = preset.tasks.get(task, {})
    ov = list(preset.finetune)
    ov += [f"task.{k}={v}" for k, v in opts.items()]
    ov.append("train.checkpoint=false")
    return ov


def to_plain(cfg: Any) -> Any:
    """A dataclass config as the JSON-plain dict ``finetune_config.json`` stores."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def run_finetune(preset: Preset, root: Path, name: str, task: str, seeds: Sequence[int], *,
                 pretrained: Path | None = None, twin_of: Path | None = None) -> dict[str, Any]:
    """Fine-tune (finished seeds are skipped by :func:`tlm_jax.tasks.finetune.finetune`)."""
    cfg = load_finetune_config(None, finetune_overrides(preset, task), task=task)
    wd = Path(root) / "finetune" / name
    saved = wd / "finetune_config.json"
    if saved.is_file() and json.loads(saved.read_text()).get("config") != to_plain(cfg):
        # Same name, other settings (e.g. split sizes): results go beside, never mixed.
        tag = hashlib.sha256(json.dumps(to_plain(cfg), sort_keys=True).encode()).hexdigest()[:6]
        name = f"{name}-c{tag}"
        wd = Path(root) / "finetune" / name
    done = wd / "results.json"
    if done.is_file():
        res = json.loads(done.read_text())
        if sorted(res.get("seeds", [])) == sorted(seeds):
            log(f"finetune {name}: finished earlier, skipped")
            return res
    log(f"finetune {name}: {task}, seeds {list(seeds)}")
    t0 = time.perf_counter()
    res = finetune(cfg, pretrained, wd, seeds, tokenizer_from=str(twin_of) if twin_of else None,
                   log=lambda m: log(f"  {m}"))
    log(f"finetune {name}: done in {time.perf_counter() - t0:.0f}s")
    return res


def pair(preset: Preset, root: Path, spec: PretrainSpec, run: Path, task: str,
         seeds: Sequence[int], twin_spec: PretrainSpec | None = None) -> dict[str, Any]:
    """Pretrained run and random-init twin on ``task``; the gap is paired by seed.

    ``twin_spec``: whose twin to use (runs that share architecture and tokenizer share
    one twin; default ``spec``'s own).
    """
    twin_spec = twin_spec or spec
    pre = run_finetune(preset, root, f"{spec.name}__{task}", task, seeds, pretrained=run)
    twin = run_finetune(preset, root, f"twin-{twin_spec.name}__{task}", task, seeds,
                        twin_of=twin_spec.workdir(root))
    return {"task": task, "pretrained": pre, "random": twin,
            "gap": paired_gap(pre["per_seed"], twin["per_seed"]),
            "gap_macro_f1": paired_gap(pre["per_seed"], twin["per_seed"], "macro_f1")}


# ----------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------


def fmt_ci(d: dict[str, Any] | None, pct: bool = True) -> str:
    """``{"mean", "ci95"}`` -> ``"81.2 ± 1.3"`` (percent)."""
    if not d:
        return "n/a"
    k = 100.0 if pct else 1.0
    return f"{d['mean'] * k:.1f} ± {d['ci95'] * k:.1f}"


def outside_ci(d: dict[str, Any]) -> bool:
    """Whether a mean ± CI interval excludes 0 (for a gap: a significant difference)."""
    return abs(d["mean"]) > d["ci95"] and d.get("n", 0) > 1


def verdict(gap: dict[str, Any]) -> str:
    """``helps`` / ``hurts`` when the CI excludes 0, else ``no significant difference``."""
    if not outside_ci(gap):
        return "no significant difference"
    return "helps" if gap["mean"] > 0 else "hurts"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_report(workdir: Path, markdown: str, data: dict[str, Any]) -> None:
    """``report.md`` and ``report.json`` (atomic writes), with the pretraining budget and
    the plateau guard's verdict (:mod:`experiments.guard`) under the title and in the JSON."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = {**data, "environment": data.get("environment") or environment()}
    markdown, data = guard.annotate(markdown, data)
    guard.save_report(workdir, markdown, data)
    log(f"wrote {workdir / 'report.md'} and report.json")
    log(f"{workdir.name}: {guard.summary_line(data)}")


def write_experiment(workdir: str | Path, collect: Callable[[], Any],
                     render: Callable[[Any, Path], tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Collect an experiment's runs, render its report (plots into ``workdir``) and write
    ``report.md`` / ``report.json``; returns the report data."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    md, data = render(collect(), workdir)
    write_report(workdir, md, data)
    return data


def seeds_and_tasks(args: argparse.Namespace, s: Any) -> tuple[Any, list[str], dict[str, str]]:
    """``s`` (settings with ``seeds`` and ``tasks``) with ``--seeds`` applied, the ``--tasks``
    (default ``s.tasks``) whose data are available, and why the others are missing."""
    if args.seeds:
        s = dataclasses.replace(s, seeds=tuple(parse_seeds(args.seeds, s.seeds)))
    tasks, missing = available_tasks(args.tasks.split(",") if args.tasks else list(s.tasks))
    return s, tasks, missing


def plt():
    """matplotlib.pyplot on the Agg backend."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot  # noqa: PLC0415 - reason: the backend is chosen before pyplot loads

    return pyplot


def slim(res: dict[str, Any]) -> dict[str, Any]:
    """A fine-tuning results.json without the bulky provenance/config (for report.json)."""
    return {k: v for k, v in res.items() if k not in ("provenance", "config")}


def enable_compile_cache(root: Path) -> None:
    """Keep compiled XLA programs under ``root/.jax_cache``.

    Sub-runs of one experiment often compile identical train/eval steps (same model,
    batch and schedule); from the second run on they load instead of recompiling.
    Call before the first compilation.
    """
    jax.config.update("jax_compilation_cache_dir", str(Path(root) / ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def build_parser(description: str,
                 extra: Callable[[argparse.ArgumentParser], None] | None = None
                 ) -> argparse.ArgumentParser:
    """The common arguments plus an experiment's ``extra`` ones (also used by
    :mod:`experiments.reproduce` to fill in each experiment's defaults)."""
    p = argparse.ArgumentParser(description=description)
    add_common_args(p)
    if extra:
        extra(p)
    return p


def main_wrapper(fn: Callable[[argparse.Namespace], None], description: str,
                 extra: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Parse the common arguments and run ``fn`` (TLMError -> one line, exit 2)."""
    args = build_parser(description, extra).parse_args()
    t0 = time.perf_counter()
    try:
        fn(args)
    except TLMError as e:
        print(f"error: {e.one_line()}", file=sys.stderr)
        sys.exit(2)
    log(f"total {time.perf_counter() - t0:.0f}s")
