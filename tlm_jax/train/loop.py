"""The pretraining loop: data -> sharded state -> jitted steps -> metrics and checkpoints.

``pretrain(cfg, workdir)`` is resumable: run it again with the same workdir and
it continues from the newest complete checkpoint, with the model, optimizer,
step, RNG and data-iterator position all restored, so the losses after the
restart equal those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from tqdm.auto import tqdm

from tlm_jax import sharding as shd
from tlm_jax.config import Config, read_config, save_config, to_dict
from tlm_jax.data.corpus import Corpus
from tlm_jax.data.pipeline import (
    epoch_of,
    eval_batches,
    make_dataset,
    make_iterator,
)
from tlm_jax.data.tokenizer import load_tokenizer, tokenizer_hash
from tlm_jax.distributed import is_main_process, maybe_initialize
from tlm_jax.errors import TLMError
from tlm_jax.models import count_params
from tlm_jax.train.checkpoint import Checkpointer, set_aside
from tlm_jax.train.continual import init_from_run, resolve_init
from tlm_jax.train.metrics import MetricsLogger
from tlm_jax.train.nonfinite import NonFiniteGuard
from tlm_jax.train.run import Run, build_run, data_seed, total_steps
from tlm_jax.train.selection import SelectionHook
from tlm_jax.train.state import TrainState, create_state, state_shardings
from tlm_jax.train.step import make_eval_step, make_train_step, summarize_eval

# Config sections that must not change when a run is resumed.
_FROZEN_SECTIONS = ("data", "model", "objective", "continual", "interventions")


def _check_resume_config(cfg: Config, workdir: Path) -> None:
    path = workdir / "config.json"
    if not path.exists() or not (workdir / "checkpoints").exists():
        return
    old = to_dict(read_config(path))
    new = to_dict(cfg)
    for section in _FROZEN_SECTIONS:
        o, n = dict(old[section]), dict(new[section])
        if section == "model":
            o.pop("vocab_size", None)
            n.pop("vocab_size", None)
        diff = sorted(k for k in n if o.get(k) != n.get(k))
        if diff:
            raise TLMError(
                f"{workdir} holds a run whose {section} settings differ ({', '.join(diff)})",
                "resume with the same settings or use a new --workdir")


def _save_tokenizer(corpus: Corpus, workdir: Path) -> None:
    path = workdir / "tokenizer.json"
    if path.exists():
        if tokenizer_hash(load_tokenizer(path)) != tokenizer_hash(corpus.tokenizer):
            raise TLMError(f"{path} differs from the tokenizer of this data configuration "
                           "(vocabulary mismatch)", "use a new --workdir")
        return
    corpus.tokenizer.save(str(path))


def _stream_transform(run: Run) -> Callable | None:
    return run.insertions.transform if run.insertions is not None else None


def _to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(shd.batch_sharding(mesh, v.ndim), v)
            for k, v in batch.items()}


def _to_pmap(batch: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in batch.items()}


@contextlib.contextmanager
def _mesh_context(mesh: jax.sharding.Mesh, pmap: bool) -> Any:
    """The mesh and logical-axis rules for jit; neither for pmap.

    pmap is built on shard_map with its own one-axis mesh: a context mesh or the
    logical constraints would refer to axes that do not exist there.
    """
    if pmap:
        with nn.logical_axis_rules(()):
            yield
    else:
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
            yield


@dataclasses.dataclass
class CompiledSteps:
    """The compiled train/eval steps and the host<->device glue for one parallel mode."""

    train: Callable
    eval: Callable
    prep: Callable[[dict[str, np.ndarray]], Any]
    put_state: Callable[[TrainState], Any]
    host_state: Callable[[Any], TrainState]


def compile_steps(run: Run, shardings: Any, *, pmap: bool = False) -> CompiledSteps:
    """jit (sharded over ``run.mesh``) or pmap (replicated, data parallel) versions of the steps."""
    axis = "batch" if pmap else None
    train_step = make_train_step(run.model, run.objectives, run.tx, run.schedule,
                                 grad_accum=run.cfg.optim.grad_accum, axis_name=axis,
                                 skip_nonfinite=run.cfg.train.nonfinite == "skip")
    eval_step = make_eval_step(run.model, run.objectives, axis_name=axis)
    if pmap:
        devices = run.mesh.devices.reshape(-1).tolist()
        n = len(devices)
        return CompiledSteps(
            train=jax.pmap(train_step, axis_name="batch", donate_argnums=0, devices=devices),
            eval=jax.pmap(eval_step, axis_name="batch", devices=devices),
            prep=lambda b: _to_pmap(b, n),
            # Through the host: pmap wants its own per-device layout, not the mesh's.
            put_state=lambda s: jax.tree.map(
                lambda x: np.broadcast_to(np.asarray(x), (n, *x.shape)), jax.device_get(s)),
            host_state=lambda s: jax.tree.map(lambda x: x[0], s))
    mesh = run.mesh
    return CompiledSteps(
        train=jax.jit(train_step, in_shardings=(shardings, None), out_shardings=(shardings, None),
                      donate_argnums=0),
        eval=jax.jit(eval_step, in_shardings=(shardings, None)),
        prep=lambda b: _to_global(b, mesh),
        put_state=lambda s: s,
        host_state=lambda s: s)


def run_steps(run: Run, num_steps: int, *, pmap: bool = False) -> list[dict[str, float]]:
    """Train ``num_steps`` from a fresh state without checkpoints; per-step metrics.

    For equivalence tests (meshes, pmap, accumulation) and benchmarks.
    """
    with _mesh_context(run.mesh, pmap):
        state, shardings = create_state(run.model, run.tx, run.mesh, run.cfg.train.seed,
                                        run.cfg.data.max_len)
        fns = compile_steps(run, shardings, pmap=pmap)
        state = fns.put_state(state)
        ds = make_dataset(run.train_source, run.cfg.train.batch_size, seed=data_seed(run.cfg),
                          transform=_stream_transform(run))
        out = []
        for i in range(num_steps):
            state, m = fns.train(state, fns.prep(ds[i]))
            out.append({k: float(np.asarray(v).reshape(-1)[0]) for k, v in jax.device_get(m).items()})
        return out


def pretrain(cfg: Config, workdir: str | Path, *, log: Callable[[str], None] = print
             ) -> dict[str, Any]:
    """Train (or resume) the run in ``workdir``; returns a summary dict."""
    maybe_initialize(cfg.distributed)
    workdir = Path(workdir)
    main = is_main_process()
    cfg = resolve_init(cfg, log=log if main else (lambda _: None))
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        _check_resume_config(cfg, workdir)
    run = build_run(cfg, log=log if main else (lambda _: None))
    if main:
        _save_tokenizer(run.corpus, workdir)
        save_config(cfg, workdir / "config.json")
        (workdir / "data_info.json").write_text(json.dumps(run.corpus.info, indent=2) + "\n")
        if run.insertions is not None:
            (workdir / "insertions.json").write_text(json.dumps(run.insertions.summary()) + "\n")
    with _mesh_context(run.mesh, cfg.train.parallel == "pmap"):
        return _loop(run, workdir, log if main else (lambda _: None))


def _set_aside_unreadable(ckpt: Checkpointer, workdir: Path, resumed: bool, restart: bool,
                          log: Callable[[str], None]) -> Checkpointer:
    """Move checkpoints that failed to restore out of the rotation (never deleted).

    With none restorable, refuse unless ``train.restart=true``: a run whose storage failed must
    not silently start again from step 0 and rotate its history away.
    """
    failed = sorted(ckpt.failed)
    if not resumed and not restart:
        ckpt.close()
        raise TLMError(f"{workdir / 'checkpoints'} holds {len(failed)} checkpoint(s) (steps "
                       f"{', '.join(map(str, failed[:5]))}{', ...' if len(failed) > 5 else ''}) and "
                       f"none can be restored: {ckpt.failed[failed[-1]]}",
                       "restore the files, or pass train.restart=true to start from step 0 (the "
                       "unreadable checkpoints are kept in checkpoints_unreadable/)")
    ckpt.close()
    moved = set_aside(workdir / "checkpoints", workdir / "checkpoints_unreadable", failed)
    log(f"warning: moved {len(moved)} unreadable checkpoint(s) to {workdir / 'checkpoints_unreadable'}"
        + ("" if resumed else "; starting from step 0 (train.restart=true)"))
    return Checkpointer(ckpt.directory, every=ckpt.every, keep=ckpt.keep, async_save=ckpt.async_save,
                        log=ckpt.log)


def _loop(run: Run, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    cfg, mesh = run.cfg, run.mesh
    pmap = cfg.train.parallel == "pmap"
    length = cfg.data.max_len
    abstract, shardings = state_shardings(run.model, run.tx, mesh, length)
    ckpt = Checkpointer(workdir / "checkpoints", every=cfg.train.checkpoint_every,
                        keep=cfg.train.keep_checkpoints, async_save=cfg.train.async_checkpoint,
                        log=log)
    restored = ckpt.restore(abstract, shardings)
    if ckpt.failed:
        ckpt = _set_aside_unreadable(ckpt, workdir, restored is not None, cfg.train.restart, log)
    data_state: dict[str, Any] = {}
    if restored:
        start, state, data_state, _ = restored
        log(f"resumed from checkpoint at step {start}")
    else:
        start = 0
        state, _ = create_state(run.model, run.tx, mesh, cfg.train.seed, length)
        if cfg.continual.init_from:
            state = init_from_run(cfg, state, mesh, log=log)
    n_params = count_params(state.params)
    log(f"model: {cfg.model.preset} ({cfg.model.arch}), {n_params:,} parameters; mesh "
        f"{dict(zip(mesh.axis_names, mesh.devices.shape, strict=True))}; {run.steps} steps")

    # INGENIOUS / random subsets: batches become a function of the step (tlm_jax/train/selection.py).
    selection = (SelectionHook(run, workdir, seed=data_seed(cfg), log=log)
                 if cfg.data.selection.method != "none" else None)
    ds = selection.dataset() if selection else make_dataset(
        run.train_source, cfg.train.batch_size, seed=data_seed(cfg),
        transform=_stream_transform(run))
    it = make_iterator(ds, prefetch=cfg.data.prefetch, workers=cfg.data.grain_workers)
    if data_state:
        it.set_state(data_state)

    fns = compile_steps(run, shardings, pmap=pmap)
    step_fn, eval_fn, prep, host_state = fns.train, fns.eval, fns.prep, fns.host_state
    state = fns.put_state(state)

    main = is_main_process()
    pad = run.corpus.special.pad
    logger = MetricsLogger(workdir, resume_step=start, tensorboard=cfg.train.tensorboard,
                           enabled=main, config=cfg)
    meta = {"config": to_dict(cfg), "tokenizer_hash": run.corpus.info["tokenizer_hash"]}

    def evaluate(step: int) -> dict[str, float]:
        main_res: dict[str, float] = {}
        for name, source in {"": run.val_source, **run.eval_sources}.items():
            sums = []
            for b in eval_batches(source, cfg.train.batch_size, cfg.train.eval_batches):
                out = eval_fn(state, prep(b))
                sums.append(jax.tree.map(lambda x: np.asarray(x).reshape(-1)[0],
                                         jax.device_get(out)))
            res = summarize_eval(sums, run.objectives)
            if res:
                logger.log(step, res, prefix=f"val_{name}" if name else "val")
            if not name:
                main_res = res
        return main_res

    bar = tqdm(total=run.steps, initial=start, disable=not (cfg.train.progress and main),
               unit="step", dynamic_ncols=True)
    first_val = evaluate(start) if start == 0 and len(run.val_source) else {}
    last_val: dict[str, float] = first_val
    t_last, tokens_since, steps_since = time.perf_counter(), 0.0, 0
    t_start = time.perf_counter()
    metrics: dict[str, Any] = {}
    step = start
    guard = NonFiniteGuard(cfg.train.nonfinite, cfg.train.max_skipped, ckpt, logger)
    pending: tuple[int, dict[str, Any]] | None = None
    finished = False
    try:
        for step in range(start, run.steps):
            if selection is not None and selection.due(step):
                it = selection.refresh(host_state(state), it, prefetch=cfg.data.prefetch,
                                       workers=cfg.data.grain_workers, main=main)
            batch = next(it)
            state, metrics = step_fn(state, prep(batch))
            # Checked one step late, so the host never waits for the step it just dispatched.
            if pending is not None:
                guard.check(*pending)
            pending = (step + 1, metrics)
            steps_since += 1
            tokens_since += float((batch["input_ids"] != pad).sum()) * jax.process_count()
            done = step + 1
            if done % cfg.train.log_every == 0 or done == run.steps:
                m = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                m.pop("tokens")
                m["tokens_per_sec"] = tokens_since / max(now - t_last, 1e-9)
                m["steps_per_sec"] = steps_since / max(now - t_last, 1e-9)
                m["epoch"] = epoch_of(done, cfg.train.batch_size, len(run.train_source))
                t_last, steps_since, tokens_since = now, 0, 0.0
                logger.log(done, m)
                bar.set_postfix(loss=f"{m['loss']:.3f}", lr=f"{m['lr']:.2e}",
                                tok_s=f"{m['tokens_per_sec']:,.0f}", refresh=False)
            if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done != run.steps:
                last_val = evaluate(done)
            if done % cfg.train.checkpoint_every == 0 or done == run.steps:
                guard.check(done, metrics)  # never checkpoint a non-finite state
                if done == run.steps and len(run.val_source):
                    last_val = evaluate(done)
                ckpt.save(done, host_state(state), it.get_state(), {**meta, "step": done},
                          force=done == run.steps)
            bar.update(1)
        finished = True
    finally:
        bar.close()
        try:
            # A refused async save stops a finished loop with its one line; an error already
            # on its way (a refused save, a non-finite loss, Ctrl-C) stays the one shown.
            ckpt.close(quiet=not finished)
        finally:
            logger.close()
    seconds = time.perf_counter() - t_start
    summary = {"workdir": str(workdir), "steps": run.steps, "start_step": start,
               "parameters": n_params, "seconds": round(seconds, 1),
               "first_val": first_val, "final_val": last_val,
               "final_train_loss": float(np.asarray(metrics["loss"]).reshape(-1)[0])
               if metrics else None,
               "data": run.corpus.info}
    if main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


__all__ = ["Run", "TrainState", "build_run", "pretrain", "total_steps"]
