"""Weights & Biases tracking: a real offline wandb run, read back from the files wandb wrote.

wandb runs in offline mode (no login, no network): it writes ``wandb/offline-run-*-<id>/
run-<id>.wandb``, a LevelDB-log file of ``wandb.proto`` ``Record`` messages. This wandb
version ships no Python reader for it, so ``_records`` reads the log framing (the one
``wandb sync`` replays) and decodes each record with wandb's own protobuf classes.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wandb
from wandb.proto import wandb_internal_pb2  # the `wandb` extra; `make setup` installs it (dev)

from tlm_jax.config import load_config
from tlm_jax.errors import TLMError
from tlm_jax.train.loop import pretrain
from tlm_jax.train.metrics import MetricsLogger, read_metrics
from tlm_jax.train.trackers import WANDB_ID_FILE

TINY = ["model.hidden=32", "model.layers=1", "model.heads=4", "model.intermediate=64",
        "model.max_len=32", "data.max_len=32", "data.synthetic_docs=200", "data.vocab_size=500",
        "train.batch_size=8", "optim.warmup_steps=2", "train.progress=false",
        "train.tensorboard=false", "train.log_every=1", "train.eval_every=2", "train.eval_batches=2",
        "train.checkpoint_every=2", "train.async_checkpoint=false",
        "train.wandb=true", "train.wandb_tags=[tiny,test]"]

_BLOCK, _HEADER = 32768, 7  # LevelDB log blocks; the file opens with ":W&B", magic, version


def _records(path: Path) -> list[Any]:
    """The ``Record`` messages of a ``.wandb`` file, in order."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    out, pos, chunk = [], _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        pos += _HEADER
        chunk += data[pos:pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST: a whole record is assembled
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(chunk)
            out.append(rec)
            chunk = b""
    return out


def _flush_wandb() -> None:
    """Wait for wandb's service to write out its files, and forget its settings.

    ``run.finish()`` returns before the service has flushed the ``.wandb`` file (a tiny run
    read at once is its 7-byte header); ``wandb.teardown`` waits for it, as the atexit hook
    of a ``tlm pretrain`` process does. It also drops wandb's per-process settings, which
    read the ``WANDB_*`` variables once: the next test's variables then count.
    """
    wandb.teardown()


def _offline_run(path: Path) -> dict[str, Any]:
    """The run record, its config and its history (step -> merged scalars) of one ``.wandb`` file."""
    run, history = None, {}
    for rec in _records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
        elif kind == "history":
            # "split/name" keys are stored split at the slash (nested_key).
            items = {i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item}
            row = {k: json.loads(v) for k, v in items.items() if not k.startswith("_")}
            history.setdefault(rec.history.step.num, {}).update(row)
    assert run is not None, f"{path} has no run record"
    config = {i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"}
    return {"run": run, "config": config, "history": history}


def _expected(workdir: Path, after: int = -1) -> dict[int, dict[str, float]]:
    """metrics.jsonl as wandb should have it: step -> {"split/name": value}."""
    out: dict[int, dict[str, float]] = {}
    for rec in read_metrics(workdir, None):
        if rec["step"] > after:
            out.setdefault(rec["step"], {}).update(
                {f"{rec['split']}/{k}": v for k, v in rec.items()
                 if k not in ("step", "split") and isinstance(v, int | float)})
    return out


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Iterator[None]:
    """wandb offline and silent, its settings and caches in tmp_path, no API key."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    for var in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    _flush_wandb()
    yield
    _flush_wandb()


def test_offline_run_holds_the_metrics_and_config_and_resume_continues_it(
        tmp_path, offline_wandb) -> None:
    work = tmp_path / "tiny-run"
    pretrain(load_config(None, [*TINY, "train.steps=4"]), work, log=lambda _: None)
    _flush_wandb()
    run_id = (work / WANDB_ID_FILE).read_text().strip()
    # WANDB_DIR unset: wandb's files sit in the run directory.
    first = sorted((work / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(first) == 1, sorted(p.name for p in (work / "wandb").iterdir())
    got = _offline_run(first[0])
    assert got["run"].run_id == run_id and got["run"].display_name == "tiny-run"
    assert got["run"].project == "tlm_jax" and list(got["run"].tags) == ["tiny", "test"]
    saved = json.loads((work / "config.json").read_text())
    assert got["config"]["train"]["steps"] == 4 and got["config"]["train"]["wandb"] is True
    assert {k: got["config"][k] for k in ("data", "objective", "optim")} == {
        k: saved[k] for k in ("data", "objective", "optim")}
    want = _expected(work)
    assert sorted(want) == [0, 1, 2, 3, 4] and "val/loss" in want[0] and "train/lr" in want[1]
    assert got["history"] == want

    # Resume for two more steps: the same wandb run id, a new offline segment for steps 5-6.
    pretrain(load_config(None, [*TINY, "train.steps=6"]), work, log=lambda _: None)
    _flush_wandb()
    assert (work / WANDB_ID_FILE).read_text().strip() == run_id
    files = sorted((work / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)
    second = _offline_run(next(f for f in files if f != first[0]))
    assert second["run"].run_id == run_id and second["config"]["train"]["steps"] == 6
    assert second["history"] == _expected(work, after=4)
    assert sorted(second["history"]) == [5, 6]


def test_wandb_dir_and_explicit_mode(tmp_path, offline_wandb, monkeypatch) -> None:
    """``WANDB_DIR`` wins over the run directory; ``train.wandb_mode`` over ``WANDB_MODE``."""
    monkeypatch.setenv("WANDB_MODE", "online")  # would need a login: the config must win
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    cfg = load_config(None, [*TINY, "train.wandb_mode=offline", "train.wandb_name=named"])
    logger = MetricsLogger(tmp_path / "run", config=cfg, tensorboard=False)
    logger.log(3, {"loss": 1.5, "note": "text"}, prefix="val")
    logger.close()
    _flush_wandb()
    run_id = (tmp_path / "run" / WANDB_ID_FILE).read_text().strip()
    (path,) = (tmp_path / "elsewhere" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    got = _offline_run(path)
    assert got["run"].display_name == "named"
    assert got["history"] == {3: {"val/loss": 1.5}}  # strings stay in metrics.jsonl only
    assert not (tmp_path / "run" / "wandb").exists()


def test_stored_id_is_reused_only_when_resuming_from_a_checkpoint(tmp_path, offline_wandb) -> None:
    cfg = load_config(None, TINY)
    (tmp_path / WANDB_ID_FILE).write_text("abcd1234\n")
    MetricsLogger(tmp_path, config=cfg, resume_step=2, tensorboard=False).close()
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == "abcd1234"
    # Restarted from step 0 (nothing restored): metrics.jsonl starts over, so does the wandb run.
    MetricsLogger(tmp_path, config=cfg, resume_step=0, tensorboard=False).close()
    new_id = (tmp_path / WANDB_ID_FILE).read_text().strip()
    assert new_id != "abcd1234"
    _flush_wandb()
    dirs = sorted(d.name.rsplit("-", 1)[1] for d in (tmp_path / "wandb").glob("offline-run-*"))
    assert sorted(dirs) == sorted(["abcd1234", new_id])


def test_only_an_enabled_logger_opens_a_wandb_run(tmp_path, offline_wandb) -> None:
    cfg = load_config(None, TINY)
    MetricsLogger(tmp_path, config=cfg, enabled=False).close()  # a process other than 0
    assert not (tmp_path / WANDB_ID_FILE).exists() and not (tmp_path / "wandb").exists()


def test_missing_extra_and_bad_mode_are_one_line_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(TLMError, match="wandb_mode='cloud'"):
        MetricsLogger(tmp_path, tensorboard=False,
                      config=load_config(None, [*TINY, "train.wandb_mode=cloud"]))
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets without the extra
    with pytest.raises(TLMError, match=r"tlm-jax\[wandb\]") as e:
        MetricsLogger(tmp_path, tensorboard=False, config=load_config(None, TINY))
    assert "\n" not in str(e.value)
