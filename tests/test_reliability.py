"""Reliability: range validation, the CLI's last line of defence, the non-finite guard, and no
silent restart when every checkpoint of a run is unreadable (issue #19)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, cli_env

from tlm_jax import cli
from tlm_jax.config import load_config
from tlm_jax.errors import NonFiniteError, TLMError
from tlm_jax.train.loop import pretrain
from tlm_jax.train.metrics import read_metrics

TINY = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.intermediate=64",
        "model.max_len=32", "data.max_len=32", "data.synthetic_docs=200", "data.vocab_size=600",
        "train.batch_size=8", "optim.warmup_steps=0", "train.progress=false",
        "train.tensorboard=false", "train.eval_every=0", "train.log_every=1",
        "train.async_checkpoint=false"]
# An absurd learning rate: the first update sends the weights to ~1e30 and the next loss is inf/NaN.
EXPLODE = ["optim.lr=1e30", "optim.clip_norm=0", "optim.schedule=constant"]


def _steps(workdir: Path) -> list[int]:
    return sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit())


@pytest.mark.parametrize("override, key", [
    ("optim.lr=nan", "optim.lr"), ("optim.lr=-1", "optim.lr"), ("optim.lr=inf", "optim.lr"),
    ("train.batch_size=0", "train.batch_size"), ("train.log_every=0", "train.log_every"),
    ("model.dropout=1.5", "model.dropout"), ("objective.mask_rate=0", "objective.mask_rate"),
    ("train.nonfinite=ignore", "train.nonfinite"),
])
def test_out_of_range_values_are_refused_before_work(override, key) -> None:
    with pytest.raises(TLMError) as e:
        load_config(None, [override])
    line = e.value.one_line()
    assert key in line and "\n" not in line and len(line) < 200


def test_unexpected_exception_is_one_line_exit_1(monkeypatch, capsys) -> None:
    def broken(_args):
        raise KeyError("boom")  # stands in for a bug in a command

    monkeypatch.setattr(cli, "_cmd_params", broken)
    assert cli.main(["params"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("internal error: KeyError: 'boom' (run with --debug")
    assert err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(KeyError):
        cli.main(["--debug", "params"])


def test_nonfinite_loss_stops_without_checkpointing_it(tmp_path) -> None:
    cfg = load_config(None, [*TINY, *EXPLODE, "train.steps=6", "train.checkpoint_every=1"])
    with pytest.raises(NonFiniteError, match="is not finite") as e:
        pretrain(cfg, tmp_path, log=lambda _: None)
    assert e.value.exit_code == 3
    bad_step = int(str(e.value).split(":")[0].split()[-1])
    # Every checkpoint on disk is from before the bad step, and holds finite values only.
    assert _steps(tmp_path) and max(_steps(tmp_path)) < bad_step
    from tlm_jax.train.pretrained import load_run

    params = load_run(tmp_path).params
    import jax

    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_nonfinite_exit_status_3_from_the_cli(tmp_path) -> None:
    cmd = [sys.executable, "-m", "tlm_jax.cli", "pretrain", "--workdir", str(tmp_path), *TINY,
           *EXPLODE, "train.steps=6", "train.checkpoint_every=2"]
    p = subprocess.run(cmd, env=cli_env(1), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 3, p.stderr[-2000:]
    err = p.stderr.strip().splitlines()
    assert err[-1].startswith("error: step ") and "lower optim.lr" in err[-1]
    assert "Traceback" not in p.stderr


def test_skip_mode_counts_and_stops_after_max_in_a_row(tmp_path) -> None:
    cfg = load_config(None, [*TINY, *EXPLODE, "train.steps=12", "train.checkpoint_every=100",
                             "train.nonfinite=skip", "train.max_skipped=3"])
    with pytest.raises(NonFiniteError, match="3 updates in a row skipped"):
        pretrain(cfg, tmp_path, log=lambda _: None)
    skipped = [m for m in read_metrics(tmp_path) if m.get("skipped") == 1.0]
    assert len(skipped) >= 3
    assert not (tmp_path / "checkpoints").exists() or not _steps(tmp_path)


def _corrupt(ckpt: Path) -> None:
    for f in (ckpt / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and f.suffix != ".json":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    for d in ("meta", "data"):
        for f in (ckpt / d).rglob("*"):
            if f.is_file():
                f.write_text("{not json")


def test_no_silent_restart_when_no_checkpoint_restores(tmp_path) -> None:
    base = [*TINY, "optim.lr=1e-3", "train.checkpoint_every=2"]
    pretrain(load_config(None, [*base, "train.steps=4"]), tmp_path, log=lambda _: None)
    assert _steps(tmp_path) == [2, 4]
    for s in (2, 4):
        _corrupt(tmp_path / "checkpoints" / str(s))
    before = read_metrics(tmp_path)
    with pytest.raises(TLMError, match=r"holds 2 checkpoint\(s\) \(steps 2, 4\) and none can be restored"):
        pretrain(load_config(None, [*base, "train.steps=6"]), tmp_path, log=lambda _: None)
    assert _steps(tmp_path) == [2, 4]  # nothing deleted, nothing moved
    assert read_metrics(tmp_path) == before
    # Asked for explicitly: start again from step 0, the unreadable checkpoints kept aside.
    logs: list[str] = []
    summary = pretrain(load_config(None, [*base, "train.steps=6", "train.restart=true"]), tmp_path,
                       log=logs.append)
    assert summary["start_step"] == 0
    assert sorted(d.name for d in (tmp_path / "checkpoints_unreadable").iterdir()) == ["2", "4"]
    assert any("moved 2 unreadable checkpoint(s)" in line for line in logs)
    assert _steps(tmp_path)[-1] == 6


def test_unreadable_newest_is_set_aside_not_rotated(tmp_path) -> None:
    base = [*TINY, "optim.lr=1e-3", "train.checkpoint_every=2", "train.keep_checkpoints=2"]
    pretrain(load_config(None, [*base, "train.steps=4"]), tmp_path, log=lambda _: None)
    _corrupt(tmp_path / "checkpoints" / "4")
    summary = pretrain(load_config(None, [*base, "train.steps=8"]), tmp_path, log=lambda _: None)
    assert summary["start_step"] == 2
    assert [d.name for d in (tmp_path / "checkpoints_unreadable").iterdir()] == ["4"]
    assert _steps(tmp_path) == [6, 8]


# ----------------------------------------------------------------------------
# One validation pass for every command and option (issue #19, item 1)
# ----------------------------------------------------------------------------


def _one_line(argv: list[str], capsys) -> str:
    """``tlm argv`` in-process: exit status 2 and exactly one short ``error:`` line."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("yaml_text, section", [
    ("model: 3\n", "model"), ("train: [1, 2]\n", "train"), ("data:\n  selection: 7\n", "data.selection"),
    ("objective:\n  options: [a]\n", "objective.options"),
])
def test_yaml_section_given_a_scalar_names_it(yaml_text, section, tmp_path, capsys) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    line = _one_line(["config", "--config", str(f)], capsys)
    assert f"config section '{section}' in config file {f}" in line and "not a mapping" in line


def test_empty_yaml_section_means_no_changes(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  # preset: mini\ntrain:\n  steps: 11\n")
    assert load_config(str(f)).train.steps == 11


@pytest.mark.parametrize("override, needle", [
    ("model=3", "config section 'model' in command-line overrides is 3"),
    ("train=null", "config section 'train' in command-line overrides is None"),
    ("data.paths[0]=x", "config key 'data.paths' in command-line overrides is a list"),
    ("name=${nosuch}", "bad value for name in the merged config"),
    ("train.seed=\x97", "cannot parse override 'train.seed=\\x97'"),
    ("model.hidden=" + "9" * 30, "model.hidden=999999999999999999999999999999 is out of range"),
    ("model.activation=swish", "model.activation='swish' is unknown (fix: use one of: gelu, "),
    ("optim.schedule=step", "optim.schedule='step' is unknown"),
    ("data.source=parquet", "data.source='parquet' is unknown"),
    ("mesh.fsdp=0", "mesh.fsdp=0 is invalid"),
])
def test_overrides_that_cannot_work_are_one_line(override, needle, capsys) -> None:
    line = _one_line(["config", override], capsys)
    assert needle in line and len(line) < 200, line


@pytest.mark.parametrize("opt, value", [
    ("--max-new", "-1"), ("--max-new", "0"), ("--temperature", "nan"), ("--temperature", "-1"),
    ("--top-p", "7"), ("--top-p", "0"), ("--top-k", "-2"), ("--num-samples", "0"), ("--seed", "-1"),
])
def test_generate_options_are_checked_before_the_run_is_read(opt, value, tmp_path, capsys) -> None:
    # The run does not exist: the option is refused first, so no work (not even a read) starts.
    line = _one_line(["generate", "--run", str(tmp_path / "none"), opt, value], capsys)
    assert line.startswith(f"error: {opt} ") and "is invalid" in line


@pytest.mark.parametrize("cmd", [
    ["pretrain", "--workdir", "{f}"],
    ["pretrain", "--workdir", "{f}/sub"],
    ["finetune", "--pretrained", "none", "--task", "synthetic", "--workdir", "{f}"],
    ["import-hf", "{d}", "--workdir", "{f}"],
    ["export-hf", "{d}", "--out", "{f}"],
])
def test_output_directory_that_is_a_file_is_refused(cmd, tmp_path, capsys) -> None:
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    argv = [a.format(f=f, d=tmp_path) for a in cmd]
    line = _one_line(argv, capsys)
    assert "not a directory" in line and f.name in line  # long paths are shortened in the middle
    assert f.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_unknown_names_give_short_lines_with_a_pointer(capsys) -> None:
    line = _one_line(["params", "bert-6-cpuu"], capsys)
    assert "unknown model preset 'bert-6-cpuu'" in line and "did you mean bert-6-cpu" in line
    assert "`tlm params` lists all" in line and len(line) < 200
    line = _one_line(["config", "--config", "cpu-bert6-wik"], capsys)
    assert "did you mean cpu-bert6-wiki" in line and "configs/ holds all" in line and len(line) < 200
    line = _one_line(["config", "model.hiden=3"], capsys)
    assert "did you mean model.hidden" in line and len(line) < 200
    line = _one_line(["mem", "--devices", "0"], capsys)
    assert "--devices 0 is invalid" in line
    line = _one_line(["generate", "--max-new", "x", "--run", "r"], capsys)  # argparse, one line too
    assert "argument --max-new: invalid int value: 'x'" in line and "tlm generate --help" in line


def test_finetune_settings_are_checked_before_work(tmp_path, capsys) -> None:
    from tlm_jax.tasks.finetune import load_finetune_config

    for override, key in [("task.max_len=1", "task.max_len"), ("task.test_fraction=nan",
                          "task.test_fraction"), ("optim.lr=0", "optim.lr"),
                          ("optim.warmup_steps=-2", "optim.warmup_steps"),
                          ("head.dropout=1", "head.dropout"), ("model.heads=0", "model.heads"),
                          ("train.epochs=inf", "train.epochs")]:
        with pytest.raises(TLMError, match=key):
            load_finetune_config(None, [override], task="synthetic")
    assert load_finetune_config(None, ["optim.warmup_steps=-1"], task="synthetic").optim.warmup_steps == -1
    line = _one_line(["finetune", "--pretrained", "none", "--task", "synthetic", "--workdir",
                      str(tmp_path / "out"), "head=mean"], capsys)
    assert "config section 'head' in command-line overrides is 'mean'" in line
    assert not (tmp_path / "out").exists()


def test_choice_lists_match_the_modules_that_own_them() -> None:
    from tlm_jax.config import CHOICES
    from tlm_jax.data.selection import METHODS, OPTIMIZERS
    from tlm_jax.data.sources import KINDS
    from tlm_jax.data.subset import MODES
    from tlm_jax.models import ARCHITECTURES
    from tlm_jax.models.layers import activation
    from tlm_jax.train.optimizer import make_optimizer
    from tlm_jax.train.trackers import WANDB_MODES

    choices = dict(CHOICES)
    assert set(choices["data.source"]) == set(KINDS)
    assert set(choices["data.subset"]) == set(MODES)
    assert set(choices["data.selection.method"]) == set(METHODS)
    assert set(choices["data.selection.optimizer"]) == set(OPTIMIZERS)
    assert set(choices["model.arch"]) == set(ARCHITECTURES)
    assert set(choices["train.wandb_mode"]) == set(WANDB_MODES)
    for name in choices["model.activation"]:
        activation(name)  # each listed activation exists
    base = load_config().optim
    for name in choices["optim.schedule"]:
        make_optimizer(dataclasses.replace(base, schedule=name), 10)
    with pytest.raises(TLMError):
        make_optimizer(dataclasses.replace(base, schedule="bogus"), 10)


def test_baseline_without_words_predicts_the_majority_class(tmp_path) -> None:
    """Found by tests/test_fuzz_cli.py: a task whose texts hold no word crashed the TF-IDF baseline
    ("empty vocabulary") after the model had trained."""
    from tlm_jax.eval.baselines import tfidf_logreg_baseline
    from tlm_jax.tasks import load_task

    f = tmp_path / "blank.csv"
    f.write_text("text,label\n" + "".join(f'"{t}",{lab}\n' for _ in range(10)
                                          for t, lab in ((".", "pos"), ("!!", "neg"), ("?", "neg"))))
    data = load_task("generic", path=str(f), text_columns=["text"], label_column="label", seed=0)
    report = tfidf_logreg_baseline(data)
    assert report["fallback"] == "majority class (no word in the training texts)"
    assert report["num_features"] == 0 and report["accuracy"] == pytest.approx(
        float(np.mean(data.test_labels == np.bincount(data.train_labels).argmax())))
