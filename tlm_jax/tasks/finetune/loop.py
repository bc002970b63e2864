"""The fine-tuning loop: one seed (train, early-stop, test) and several seeds plus the baseline."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from tlm_jax import sharding as shd
from tlm_jax.errors import TLMError
from tlm_jax.eval.baselines import tfidf_logreg_baseline
from tlm_jax.models import count_params
from tlm_jax.tasks.finetune.backbone import (
    Backbone,
    encode_texts,
    load_task_data,
    pad_rows,
    resolve_backbone,
    seq_length,
)
from tlm_jax.tasks.finetune.compiled import compile_finetune, global_array, predict_logits
from tlm_jax.tasks.finetune.config import FinetuneConfig, TaskConfig
from tlm_jax.tasks.finetune.report import score_logits, summarize_seeds, write_json
from tlm_jax.train.checkpoint import Checkpointer
from tlm_jax.train.metrics import MetricsLogger
from tlm_jax.train.pretrained import load_pretrained_variables

# ----------------------------------------------------------------------------
# One seed
# ----------------------------------------------------------------------------


def _graft_pretrained(state: Any, enc_params: Any, enc_state: Any, shardings: Any) -> Any:
    """Replace ``params['encoder']`` (and ``model_state[*]['encoder']``) by pretrained values."""
    target = state.params["encoder"]
    missing = sorted(set(target) - set(enc_params))
    if missing:
        raise TLMError(f"the pretrained checkpoint lacks encoder parameters {missing}",
                       "fine-tune a run of the same architecture")
    picked = {k: enc_params[k] for k in target}
    t_shapes = jax.tree.map(lambda x: tuple(x.shape), target)
    p_shapes = jax.tree.map(lambda x: tuple(x.shape), picked)
    if jax.tree.structure(t_shapes) != jax.tree.structure(p_shapes) or \
            jax.tree.leaves(t_shapes) != jax.tree.leaves(p_shapes):
        raise TLMError("the pretrained encoder's parameter shapes differ from the fine-tuning model",
                       "do not override the model shape when fine-tuning a run")
    new_enc = jax.device_put(picked, shardings.params["encoder"])
    params = dict(state.params)
    params["encoder"] = new_enc
    model_state = dict(state.model_state)
    for col, tree in model_state.items():
        if isinstance(tree, dict) and "encoder" in tree and col in (enc_state or {}):
            sub = dict(tree)
            sub["encoder"] = jax.device_put(
                {k: enc_state[col][k] for k in tree["encoder"]},
                shardings.model_state[col]["encoder"])
            model_state[col] = sub
    return state.replace(params=params, model_state=model_state)


def _batches_for_epoch(n: int, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([seed, 7919, epoch]).permutation(n)
    return [order[i:i + batch] for i in range(0, n, batch)]


def _train_batch(ids: np.ndarray, labels: np.ndarray, idx: np.ndarray, batch: int
                 ) -> dict[str, np.ndarray]:
    k = len(idx)
    take = np.concatenate([idx, np.full(batch - k, idx[0], idx.dtype)]) if k < batch else idx
    w = np.zeros(batch, np.float32)
    w[:k] = 1.0
    return {"input_ids": ids[take], "labels": labels[take].astype(np.int32), "weights": w,
            "index": np.arange(batch, dtype=np.int32)}



def _resume_best(best_ckpt: Checkpointer, start: int, best_step: int, abstract: Any,
                 shardings: Any, seed: int) -> tuple[Any, Any] | None:
    """The best weights a seed resumed at ``start`` knows of (saved at ``best_step``; 0: none).

    Best checkpoints newer than ``start`` were saved by a run killed before its step checkpoint:
    they are dropped (the resumed run replays those steps, and would find their step taken).
    """
    best_ckpt.drop_after(start)
    if not best_step:
        return None
    rb = best_ckpt.restore(abstract, shardings, only=best_step)
    if rb is None:
        raise TLMError(f"seed {seed}: the best checkpoint (step {best_step}) in {best_ckpt.directory} "
                       "is missing or cannot be restored",
                       f"delete {best_ckpt.directory.parent} to run this seed again")
    return jax.device_get((rb[1].params, rb[1].model_state))


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric == "loss" else new > old


def finetune_seed(cfg: FinetuneConfig, backbone: Backbone, data: Any, seed: int, workdir: Path,
                  *, pretrained_vars: tuple[Any, Any, int] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune one seed on ``data``; writes ``workdir/results.json`` and returns it."""
    t0 = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    tok, special = backbone.tokenizer, backbone.special
    enc = {s: encode_texts(tok, special, getattr(data, f"{s}_texts"), backbone.max_len)
           for s in ("train", "val", "test")}
    length = seq_length([enc[s][0] for s in enc], backbone.max_len)
    ids = {s: pad_rows(enc[s][0], length, special.pad) for s in enc}
    labels = {s: np.asarray(getattr(data, f"{s}_labels"), np.int32) for s in enc}
    n_train = len(ids["train"])
    if n_train == 0:
        raise TLMError(f"task {data.name} has no training examples", "check the split options")
    tcfg = cfg.train
    steps_per_epoch = math.ceil(n_train / tcfg.batch_size)
    total = tcfg.steps if tcfg.steps > 0 else max(1, math.ceil(tcfg.epochs * steps_per_epoch))
    eval_every = tcfg.eval_every or steps_per_epoch
    has_val = len(ids["val"]) > 0
    comp = compile_finetune(backbone, cfg, data.num_classes, length, total)
    dp = comp.mesh.devices.shape[0] * comp.mesh.devices.shape[1]
    if tcfg.batch_size % dp:
        raise TLMError(f"train.batch_size={tcfg.batch_size} is not divisible by data*fsdp={dp}",
                       f"use a multiple of {dp}")

    with jax.set_mesh(comp.mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        state = comp.init(jax.random.PRNGKey(seed))
        if pretrained_vars is not None:
            state = _graft_pretrained(state, pretrained_vars[0], pretrained_vars[1],
                                      comp.shardings)
        n_params = count_params(state.params)
        meta_es: dict[str, Any] = {"best_value": None, "best_step": 0, "bad_evals": 0,
                                   "history": [], "stopped_early": False}
        ckpt = best_ckpt = None
        start = 0
        best_params = best_ms = None
        if tcfg.checkpoint:
            ckpt = Checkpointer(workdir / "checkpoints", every=1, keep=1, async_save=False, log=log)
            # Two kept: a new best is saved before the step's checkpoint, so a run killed between
            # the two still finds the best its resumed step knows (see _resume_best).
            best_ckpt = Checkpointer(workdir / "best", every=1, keep=2, async_save=False, log=log)
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
            restored = ckpt.restore(abstract, comp.shardings)
            if restored is None and ckpt.failed:
                # As in pretraining: never silently train a seed again over unreadable files.
                ckpt.close()
                best_ckpt.close()
                raise TLMError(f"seed {seed}: the checkpoint(s) in {workdir / 'checkpoints'} "
                               f"(steps {', '.join(map(str, sorted(ckpt.failed)))}) cannot be "
                               "restored", f"restore the files, or delete {workdir} to train "
                               "this seed again")
            if restored is not None:
                start, state, _, meta = restored
                meta_es.update(meta.get("early_stopping") or {})
                log(f"seed {seed}: resumed at step {start}")
            best = _resume_best(best_ckpt, start, meta_es["best_step"] if restored else 0,
                                abstract, comp.shardings, seed)
            if best is not None:
                best_params, best_ms = best
        logger = MetricsLogger(workdir, resume_step=start, tensorboard=tcfg.tensorboard,
                               enabled=jax.process_index() == 0)

        def evaluate(params: Any, ms: Any, split: str) -> tuple[dict[str, Any], np.ndarray]:
            logits = predict_logits(comp, params, ms, ids[split], tcfg.eval_batch_size)
            return score_logits(logits, labels[split], data.label_names), logits

        step = start
        stop = meta_es.get("stopped_early", False) or start >= total
        t_train = time.perf_counter()
        while not stop:
            epoch = step // steps_per_epoch
            batches = _batches_for_epoch(n_train, tcfg.batch_size, seed, epoch)
            for bi in range(step % steps_per_epoch, steps_per_epoch):
                b = _train_batch(ids["train"], labels["train"], batches[bi], tcfg.batch_size)
                gb = {k: global_array(v, shd.batch_sharding(comp.mesh, v.ndim)) for k, v in b.items()}
                state, metrics = comp.train_step(state, gb)
                step += 1
                if step % tcfg.log_every == 0 or step == total:
                    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    m.pop("tokens", None)
                    m["epoch"] = step / steps_per_epoch
                    logger.log(step, m)
                if step % eval_every == 0 or step == total:
                    if has_val:
                        rep, _ = evaluate(state.params, state.model_state, "val")
                        value = rep["loss"] if tcfg.metric == "loss" else rep[tcfg.metric]
                        logger.log(step, {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"],
                                          "loss": rep["loss"]}, prefix="val")
                        meta_es["history"].append({"step": step, "accuracy": rep["accuracy"],
                                                   "macro_f1": rep["macro_f1"],
                                                   "loss": rep["loss"]})
                        if _better(tcfg.metric, value, meta_es["best_value"]):
                            meta_es.update(best_value=value, best_step=step, bad_evals=0)
                            best_params, best_ms = jax.device_get((state.params, state.model_state))
                            if best_ckpt is not None:
                                best_ckpt.save(step, state, {"step": step},
                                               {"kind": "best", "value": value}, force=True)
                        else:
                            meta_es["bad_evals"] += 1
                            if tcfg.patience and meta_es["bad_evals"] >= tcfg.patience:
                                meta_es["stopped_early"] = True
                    if ckpt is not None:
                        ckpt.save(step, state, {"step": step},
                                  {"early_stopping": meta_es, "seed": seed}, force=True)
                if step >= total or meta_es["stopped_early"]:
                    stop = True
                    break
        train_seconds = time.perf_counter() - t_train
        if best_params is None:  # no validation split: the final weights
            best_params, best_ms = state.params, state.model_state
            meta_es["best_step"] = step
        test_rep, test_logits = evaluate(best_params, best_ms, "test")
        if ckpt is not None:
            ckpt.close()
            best_ckpt.close()  # type: ignore[union-attr]
        logger.log(step, {"accuracy": test_rep["accuracy"], "macro_f1": test_rep["macro_f1"]},
                   prefix="test")
        logger.close()
    np.save(workdir / "test_logits.npy", test_logits.astype(np.float32))
    np.save(workdir / "test_labels.npy", labels["test"])
    result = {
        "task": data.name,
        "seed": seed,
        **{k: test_rep[k] for k in ("accuracy", "macro_f1", "per_class_accuracy",
                                    "per_class_f1", "support", "label_names",
                                    "confusion_matrix", "loss")},
        "split_sizes": data.sizes(),
        "split_seed": data.provenance.get("seed"),
        "sequence_length": length,
        "truncated": {s: enc[s][1] for s in enc},
        "pretrained": backbone.info | ({"step": pretrained_vars[2]} if pretrained_vars else {}),
        "parameters": n_params,
        "steps": step,
        "total_steps": total,
        "steps_per_epoch": steps_per_epoch,
        "best_step": meta_es["best_step"],
        "best_val": meta_es["best_value"],
        "early_stopping_metric": tcfg.metric if has_val else None,
        "stopped_early": meta_es["stopped_early"],
        "val_history": meta_es["history"],
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
        "provenance": data.provenance,
    }
    write_json(workdir / "results.json", result)
    log(f"seed {seed}: test accuracy {result['accuracy']:.4f}, macro-F1 "
        f"{result['macro_f1']:.4f} (best step {result['best_step']}/{step}, "
        f"{result['seconds']:.0f}s)")
    return result


# ----------------------------------------------------------------------------
# Several seeds + baseline
# ----------------------------------------------------------------------------


def _split_seed(tc: TaskConfig, seed: int) -> int:
    return seed if tc.split_seed < 0 else tc.split_seed


def _fingerprint(cfg: FinetuneConfig, backbone: Backbone) -> str:
    """What a finished seed's result depends on: the config, the initialisation (and the
    pretrained run's newest checkpoint step), the tokenizer and the architecture -- not
    paths, so a moved run still resumes."""
    key = {"config": dataclasses.asdict(cfg), "init": backbone.info["init"],
           "tokenizer_hash": backbone.info["tokenizer_hash"], "model": backbone.info["model"],
           "max_len": backbone.info["max_len"]}
    ckpts = backbone.run_dir / "checkpoints" if backbone.run_dir is not None else None
    if ckpts is not None and ckpts.is_dir():
        key["checkpoint_step"] = max((int(p.name) for p in ckpts.iterdir() if p.name.isdigit()),
                                     default=None)
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finetune(cfg: FinetuneConfig, pretrained: str | os.PathLike | None, workdir: str | os.PathLike,
             seeds: Sequence[int] = (0,), *, tokenizer_from: str | None = None,
             overrides: Sequence[str] = (), log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune ``pretrained`` (``None`` = random-init twin) for each seed; see the module doc."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise TLMError("no seeds given", "pass --seeds 0,1,2")
    t0 = time.perf_counter()
    backbone = resolve_backbone(pretrained, tokenizer_from=tokenizer_from, cfg=cfg,
                                overrides=overrides)
    fingerprint = _fingerprint(cfg, backbone)
    prev = workdir / "finetune_config.json"
    if prev.is_file():
        old = json.loads(prev.read_text()).get("fingerprint")
        finished = [s for s in seeds if (workdir / f"seed_{s}" / "results.json").is_file()]
        if old is not None and old != fingerprint and finished:
            raise TLMError(
                f"{workdir} holds fine-tuning results (seeds {finished}) of another config or "
                "backbone; reusing them would mix results",
                "pass a new output directory, or delete this one to start over")
    write_json(prev, {"config": dataclasses.asdict(cfg), "pretrained": backbone.info,
                       "seeds": seeds, "fingerprint": fingerprint})
    pre_vars = None
    per_seed: list[dict[str, Any]] = []
    baselines: list[dict[str, Any]] = []
    for seed in seeds:
        sdir = workdir / f"seed_{seed}"
        data = None
        if (sdir / "results.json").is_file():
            res = json.loads((sdir / "results.json").read_text())
            log(f"seed {seed}: finished earlier (accuracy {res['accuracy']:.4f}), skipped")
        else:
            data = load_task_data(cfg.task, _split_seed(cfg.task, seed))
            if backbone.run_dir is not None and pre_vars is None:
                mesh = shd.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
                with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
                    pre_vars = load_pretrained_variables(backbone.run_dir, mesh, log=log)
                log(f"loaded pretrained encoder from {backbone.run_dir} (step {pre_vars[2]})")
            res = finetune_seed(cfg, backbone, data, seed, sdir, pretrained_vars=pre_vars, log=log)
        per_seed.append(res)
        if cfg.train.baseline:
            bpath = sdir / "baseline.json"
            if bpath.is_file():
                base = json.loads(bpath.read_text())
            else:
                if data is None:
                    data = load_task_data(cfg.task, _split_seed(cfg.task, seed))
                base = tfidf_logreg_baseline(data, seed=seed)
                write_json(bpath, base)
            baselines.append(base)
    summary = summarize_seeds(per_seed, baselines)
    first = per_seed[0]
    results = {
        "task": first["task"],
        "pretrained": first["pretrained"],
        "seeds": seeds,
        "seed": seeds[0] if len(seeds) == 1 else seeds,
        **summary,
        "split_sizes": first["split_sizes"],
        "split_sizes_per_seed": {str(r["seed"]): r["split_sizes"] for r in per_seed},
        "label_names": first["label_names"],
        "parameters": first["parameters"],
        "config": dataclasses.asdict(cfg),
        "seconds": round(time.perf_counter() - t0, 1),
        "per_seed": [{k: r[k] for k in ("seed", "accuracy", "macro_f1", "per_class_accuracy",
                                         "confusion_matrix", "split_sizes", "split_seed",
                                         "best_step", "steps", "stopped_early", "seconds")}
                     for r in per_seed],
        "provenance": first["provenance"],
    }
    write_json(workdir / "results.json", results)
    acc, base = results["accuracy"], results.get("baseline", {}).get("accuracy")
    log(f"{results['task']} ({backbone.info['init']}): accuracy {acc['mean']:.4f} ± "
        f"{acc['ci95']:.4f} over {len(seeds)} seed(s)"
        + (f"; TF-IDF+LR {base['mean']:.4f} ± {base['ci95']:.4f}" if base else ""))
    return results
