"""Fine-tuning: the classification objective, frozen encoder, early stopping, results, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, cli_env, keyword_csv

from tlm_jax.config import load_config
from tlm_jax.errors import TLMError
from tlm_jax.eval.metrics import mean_ci95
from tlm_jax.objectives.base import ObjectiveConfig
from tlm_jax.tasks.finetune import (
    ClassificationObjective,
    encode_texts,
    finetune,
    load_finetune_config,
    paired_gap,
    parse_task_arg,
    seq_length,
    summarize_seeds,
)
from tlm_jax.train.loop import pretrain

TINY_PRE = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.intermediate=64",
            "model.max_len=32", "data.max_len=32", "data.synthetic_docs=300",
            "data.vocab_size=1000", "train.batch_size=16", "train.steps=2",
            "train.eval_every=0", "train.checkpoint_every=2", "train.progress=false",
            "train.tensorboard=false", "optim.warmup_steps=1", "data.val_fraction=0.0"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 4-step pretraining run of a 1-layer, hidden-32 model on the synthetic corpus."""
    wd = tmp_path_factory.mktemp("pre") / "run"
    pretrain(load_config(None, TINY_PRE), wd, log=lambda _: None)
    return wd


def _ft_cfg(csv: Path, *extra: str):
    return load_finetune_config(None, [
        "task.text_columns=[text]", "task.label_column=label", "task.val_fraction=0.25",
        "train.batch_size=8", "train.epochs=2", "optim.lr=1e-3", "train.baseline=false",
        "train.checkpoint=false", *extra], task=f"csv:{csv}")


# ----------------------------------------------------------------------------
# Pure pieces
# ----------------------------------------------------------------------------


def test_classification_loss_math() -> None:
    from tlm_jax.data.tokenizer import SpecialTokens

    special = SpecialTokens(0, 1, 2, 3, 4, 50)
    obj = ClassificationObjective(cfg=ObjectiveConfig(), special=special, max_len=8)
    ids = jnp.array([[2, 7, 3, 0], [2, 9, 9, 3], [2, 5, 3, 0]], jnp.int32)
    batch = {"input_ids": ids, "labels": jnp.array([1, 0, 2]),
             "weights": jnp.array([1.0, 1.0, 0.0])}
    inputs, targets = obj.transform(batch, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(inputs["input_ids"], ids)
    np.testing.assert_array_equal(inputs["attention_mask"], np.asarray(ids) != 0)
    logits = np.array([[0.1, 2.0, -1.0], [1.5, 0.0, 0.3], [9.0, 0.0, 0.0]], np.float32)
    terms = obj.loss({"class_logits": jnp.asarray(logits)}, targets)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -logp[np.arange(3), [1, 0, 2]]
    # The weight-0 row (a padded slot) contributes nothing; weights are the normaliser.
    np.testing.assert_allclose(float(terms.loss_sum), nll[:2].sum(), rtol=1e-6)
    assert float(terms.weight_sum) == 2.0
    assert float(terms.metrics["classify_accuracy"]) == 2.0  # both real rows are argmax-correct


def test_parse_task_arg_and_config_errors() -> None:
    assert parse_task_arg("ag_news") == {"name": "ag_news"}
    assert parse_task_arg("csv:/x/y.csv") == {"name": "generic", "path": "/x/y.csv",
                                              "format": "csv"}
    assert parse_task_arg("tfds:ag_news_subset") == {"name": "tfds", "path": "ag_news_subset"}
    assert parse_task_arg("data/file.jsonl")["name"] == "generic"
    with pytest.raises(TLMError, match="unknown fine-tuning config key 'train.epoch'"):
        load_finetune_config(None, ["train.epoch=3"], task="ag_news")
    with pytest.raises(TLMError, match="head.pooling"):
        load_finetune_config(None, ["head.pooling=max"], task="ag_news")


def test_encode_truncates_to_max_len(tiny_run) -> None:
    from tlm_jax.data.tokenizer import load_tokenizer, special_tokens

    tok = load_tokenizer(tiny_run / "tokenizer.json")
    sp = special_tokens(tok)
    rows, cut = encode_texts(tok, sp, ["the city " * 40, "a club"], 16)
    assert cut == 1 and len(rows[0]) == 16 and rows[0][0] == sp.cls and rows[0][-1] == sp.sep
    assert seq_length([rows], 16) == 16 and seq_length([rows[1:]], 16) == 8


def test_summarize_seeds_and_paired_gap() -> None:
    names = ["a", "b"]

    def res(seed, acc):
        return {"seed": seed, "accuracy": acc, "macro_f1": acc - 0.1, "label_names": names,
                "per_class_accuracy": {"a": acc, "b": acc}, "confusion_matrix": [[1, 0], [0, 1]]}

    pre = [res(0, 0.8), res(1, 0.9), res(2, 0.85)]
    twin = [res(0, 0.6), res(1, 0.65), res(2, 0.7)]
    s = summarize_seeds(pre, [{"accuracy": 0.7, "macro_f1": 0.6}] * 3)
    ref = mean_ci95([0.8, 0.9, 0.85])
    assert s["accuracy"]["mean"] == pytest.approx(ref["mean"])
    assert s["accuracy"]["ci95"] == pytest.approx(ref["ci95"]) and ref["ci95"] > 0
    assert s["confusion_matrix"] == [[3, 0], [0, 3]]
    assert s["baseline"]["accuracy"]["mean"] == pytest.approx(0.7)
    gap = paired_gap(pre, twin)
    assert gap["mean"] == pytest.approx(np.mean([0.2, 0.25, 0.15]))
    assert gap["n"] == 3


# ----------------------------------------------------------------------------
# Machinery
# ----------------------------------------------------------------------------


def test_frozen_encoder_is_really_frozen(tiny_run, tmp_path) -> None:
    import flax.linen as nn

    from tlm_jax import sharding as shd
    from tlm_jax.tasks.finetune import resolve_backbone
    from tlm_jax.tasks.finetune.compiled import compile_finetune
    from tlm_jax.tasks.finetune.loop import _graft_pretrained
    from tlm_jax.train.pretrained import load_pretrained_variables

    cfg = _ft_cfg(keyword_csv(tmp_path / "d.csv"), "head.freeze_encoder=true", "optim.lr=1e-1",
                  "optim.weight_decay=0.5")
    bb = resolve_backbone(tiny_run, tokenizer_from=None, cfg=cfg)
    comp = compile_finetune(bb, cfg, 2, 16, 10)
    with jax.set_mesh(comp.mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        pre = load_pretrained_variables(tiny_run, comp.mesh, log=lambda _: None)
        state = _graft_pretrained(comp.init(jax.random.PRNGKey(0)), pre[0], pre[1],
                                  comp.shardings)
        before = jax.device_get(state.params)
        rng = np.random.default_rng(0)
        for _ in range(3):
            batch = {"input_ids": rng.integers(5, 100, (8, 16)).astype(np.int32),
                     "labels": rng.integers(0, 2, 8).astype(np.int32),
                     "weights": np.ones(8, np.float32), "index": np.arange(8, dtype=np.int32)}
            state, _ = comp.train_step(state, batch)
        after = jax.device_get(state.params)
    for b, a in zip(jax.tree.leaves(before["encoder"]), jax.tree.leaves(after["encoder"]),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # ... and it really is the pretrained encoder.
    np.testing.assert_array_equal(before["encoder"]["embeddings"]["word"]["embedding"],
                                  pre[0]["embeddings"]["word"]["embedding"])
    assert not np.allclose(before["classifier"]["kernel"], after["classifier"]["kernel"])


def test_predict_in_cpu_row_chunks_matches_small_batches(tiny_run, tmp_path) -> None:
    """A CPU eval batch runs in row chunks per device shard (models/batching.py): same logits."""
    import flax.linen as nn

    from tlm_jax import sharding as shd
    from tlm_jax.models.batching import default_chunk_rows
    from tlm_jax.tasks.finetune import predict_logits, resolve_backbone
    from tlm_jax.tasks.finetune.compiled import compile_finetune

    cfg = _ft_cfg(keyword_csv(tmp_path / "d.csv"))  # the batch split over 8 devices
    bb = resolve_backbone(tiny_run, tokenizer_from=None, cfg=cfg)
    comp = compile_finetune(bb, cfg, 3, 16, 10)
    assert comp.mesh.shape["data"] == 8 and default_chunk_rows(16) == 64
    ids = np.random.default_rng(0).integers(5, 100, (100, 16)).astype(np.int32)
    ids[:, 12:] = bb.special.pad
    with jax.set_mesh(comp.mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        state = comp.init(jax.random.PRNGKey(0))
        # 1,000 rows: 125 per device, two chunks of 64 rows each (the second one padded).
        ids = np.concatenate([ids] * 11)[:1000]
        chunked = predict_logits(comp, state.params, state.model_state, ids, 1024)
        small = np.concatenate([predict_logits(comp, state.params, state.model_state,
                                               ids[i:i + 200], 200) for i in range(0, 1000, 200)])
    assert chunked.shape == (1000, 3)
    np.testing.assert_allclose(chunked, small, rtol=1e-5, atol=1e-6)


def test_early_stopping_resume_and_twin(tiny_run, tmp_path) -> None:
    # With lr 1e-30 (0 is refused as a config error) the weights do not move, so the
    # validation metric never improves after the first check and patience 1 stops at the
    # second check, long before the 20-epoch budget.
    cfg = _ft_cfg(keyword_csv(tmp_path / "d.csv"), "optim.lr=1e-30", "train.patience=1",
                  "train.epochs=20", "train.checkpoint=true")
    res = finetune(cfg, tiny_run, tmp_path / "out", [0], log=lambda _: None)
    seed = json.loads((tmp_path / "out" / "seed_0" / "results.json").read_text())
    assert seed["stopped_early"] is True
    assert seed["steps"] == 2 * seed["steps_per_epoch"] < seed["total_steps"]
    assert seed["best_step"] == seed["steps_per_epoch"]
    assert len(seed["val_history"]) == 2
    assert (tmp_path / "out" / "seed_0" / "best").is_dir()
    assert (tmp_path / "out" / "seed_0" / "checkpoints").is_dir()
    assert res["per_seed"][0]["stopped_early"] is True
    # A finished seed is skipped when the command is run again.
    msgs: list[str] = []
    again = finetune(cfg, tiny_run, tmp_path / "out", [0], log=msgs.append)
    assert any("skipped" in m for m in msgs) and again["accuracy"] == res["accuracy"]
    # ... but never reused for another config or backbone: that would mix results.
    other = _ft_cfg(keyword_csv(tmp_path / "d.csv"), "optim.lr=1e-3", "train.patience=1",
                    "train.epochs=20", "train.checkpoint=true")
    with pytest.raises(TLMError, match="another config or backbone"):
        finetune(other, tiny_run, tmp_path / "out", [0], log=lambda _: None)
    with pytest.raises(TLMError, match="another config or backbone"):
        finetune(cfg, None, tmp_path / "out", [0], tokenizer_from=str(tiny_run),
                 log=lambda _: None)
    # The random-init twin: same architecture and parameter count, no pretrained run.
    with pytest.raises(TLMError, match="--tokenizer-from"):
        finetune(cfg, None, tmp_path / "twin", [0], log=lambda _: None)
    twin = finetune(cfg, None, tmp_path / "twin", [0], tokenizer_from=str(tiny_run),
                    log=lambda _: None)
    assert twin["pretrained"]["init"] == "random" and twin["pretrained"]["run"] is None
    assert twin["pretrained"]["twin_of"] == str(tiny_run.resolve())
    assert twin["parameters"] == res["parameters"]


def test_cli_generic_csv_end_to_end(tiny_run, tmp_path) -> None:
    csv = keyword_csv(tmp_path / "reviews.csv")
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "tlm_jax.cli", "finetune", "--pretrained", str(tiny_run),
           "--task", f"csv:{csv}", "--workdir", str(out), "--seeds", "0,1",
           "task.text_columns=[text]", "task.label_column=label", "task.val_fraction=0.25",
           "train.epochs=3", "optim.lr=3e-3", "train.batch_size=8", "train.checkpoint=false"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=cli_env(1),
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "TF-IDF" in p.stdout
    res = json.loads((out / "results.json").read_text())
    for key in ("accuracy", "macro_f1", "per_class_accuracy", "confusion_matrix", "seed",
                "seeds", "split_sizes", "pretrained", "baseline", "per_seed"):
        assert key in res, key
    assert res["seeds"] == [0, 1] and len(res["per_seed"]) == 2
    assert res["pretrained"]["run"] == str(tiny_run.resolve())
    assert res["pretrained"]["init"] == "pretrained" and res["pretrained"]["step"] == 2
    assert res["split_sizes"] == {"train": 28, "val": 10, "test": 10}
    assert set(res["per_class_accuracy"]) == {"neg", "pos"}
    assert np.asarray(res["confusion_matrix"]).sum() == 20  # 2 seeds x 10 test rows
    assert {"mean", "ci95", "n"} <= set(res["accuracy"]) and res["accuracy"]["n"] == 2
    assert 0.0 <= res["baseline"]["accuracy"]["mean"] <= 1.0
    seed0 = json.loads((out / "seed_0" / "results.json").read_text())
    assert seed0["seed"] == 0 and len(seed0["confusion_matrix"]) == 2
    assert (out / "seed_1" / "test_logits.npy").is_file()


def test_fingerprint_follows_the_pretrained_checkpoint_step(tmp_path) -> None:
    """A run trained further since its fine-tune is another backbone (its seeds are not reused)."""
    from tlm_jax.tasks.finetune import Backbone
    from tlm_jax.tasks.finetune.loop import _fingerprint

    (tmp_path / "checkpoints" / "100").mkdir(parents=True)
    info = {"init": "pretrained", "tokenizer_hash": "abc", "model": {"hidden": 8}, "max_len": 16}
    bb = Backbone(None, None, None, 16, tmp_path, "run", info)
    cfg = _ft_cfg(keyword_csv(tmp_path / "d.csv"))
    before = _fingerprint(cfg, bb)
    assert _fingerprint(cfg, bb) == before
    (tmp_path / "checkpoints" / "200").mkdir()
    assert _fingerprint(cfg, bb) != before


def test_unreadable_seed_checkpoint_is_refused_not_retrained(tiny_run, tmp_path) -> None:
    """A seed whose checkpoints all fail to restore is refused in one line, not silently
    trained again over them (the pretraining rule, issue #19)."""
    from tlm_jax.errors import TLMError

    cfg = _ft_cfg(keyword_csv(tmp_path / "d.csv"), "train.checkpoint=true")
    finetune(cfg, tiny_run, tmp_path / "out", [0], log=lambda _: None)
    seed_dir = tmp_path / "out" / "seed_0"
    (seed_dir / "results.json").unlink()  # as if killed before the seed finished
    for f in (seed_dir / "checkpoints").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    before = sorted(p.name for p in (seed_dir / "checkpoints").iterdir())
    with pytest.raises(TLMError, match=r"seed 0: the checkpoint\(s\) .* cannot be restored"):
        finetune(cfg, tiny_run, tmp_path / "out", [0], log=lambda _: None)
    assert sorted(p.name for p in (seed_dir / "checkpoints").iterdir()) == before
