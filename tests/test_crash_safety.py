"""Crash safety of real ``tlm`` processes: refused writes and SIGKILLs (issue #19, items 5 and 7).

Refused writes are real: the file-size limit (RLIMIT_FSIZE, ``ulimit -f``) of the ``tlm``
process, set from its start (``preexec_fn``) or lowered while it runs (``prlimit``) once the
stage before the one under test is on disk. CPython ignores SIGXFSZ, so writes past the limit
fail with EFBIG, as on a full disk. (A read-only directory cannot be had here: the tests run as
root, whom ``chmod`` does not stop; the file-size limit stands in for it.)

Kills are SIGKILL, sent when a file of the stage under test appears (polled), so they land
mid-stage. After each, the next command must finish correctly or refuse in one line, and no
half-written artefact may ever be used.
"""

from __future__ import annotations

import json
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, cli_env, keyword_csv

from tlm_jax.train.metrics import read_metrics

pytestmark = pytest.mark.slow

TINY = ["model.hidden=32", "model.layers=2", "model.heads=4", "model.intermediate=64",
        "model.max_len=32", "data.max_len=32", "data.synthetic_docs=400", "data.vocab_size=1000",
        "train.batch_size=16", "optim.warmup_steps=2", "optim.lr=3e-3", "train.progress=false",
        "train.tensorboard=false", "train.eval_every=0"]
# 5,000 words train the vocabulary: the tokenizer's spool (~30 KB) stays under the 64 KiB
# limit below, the token arrays (~100 KB) do not.
PRETRAIN = [*TINY, "data.tokenizer_max_words=5000", "train.steps=60", "train.checkpoint_every=10",
            "train.keep_checkpoints=1", "train.log_every=10"]
CACHE_LIMIT = 64 * 1024
# Every checkpoint of the tiny model has data files of 120-450 KB (measured: the per-file limit
# cannot tell the first checkpoint from later ones, so it is lowered while the run goes on);
# metrics.jsonl stays under 2 KB.
CKPT_LIMIT = 48 * 1024


def _tlm(args: list[str], env: dict[str, str] | None = None, limit: int | None = None
         ) -> subprocess.Popen:
    preexec = None
    if limit is not None:
        def preexec() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.Popen([sys.executable, "-m", "tlm_jax.cli", *args], env=env or cli_env(1),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=preexec)


def _finish(p: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def _error_line(rc: int, out: str, status: int = 2) -> str:
    """The one ``error:`` line of a refused command (status ``status``, no traceback)."""
    assert rc == status, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out[-3000:]
    return errors[0]


def _kill_when(p: subprocess.Popen, ready: Callable[[], bool], what: str,
               timeout: float = 300) -> str:
    """SIGKILL ``p`` as soon as ``ready()`` (fails if ``p`` ended first); what it printed."""
    deadline = time.time() + timeout
    while not ready():
        if p.poll() is not None:
            pytest.fail(f"the process ended before {what}:\n{p.communicate()[0][-3000:]}")
        if time.time() > deadline:
            p.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    out, _ = p.communicate()
    assert p.returncode == -signal.SIGKILL
    return out


def _limit_when(p: subprocess.Popen, ready: Callable[[], bool], limit: int, what: str,
                timeout: float = 300) -> None:
    """Lower ``p``'s file-size limit to ``limit`` bytes as soon as ``ready()``."""
    deadline = time.time() + timeout
    while not ready():
        if p.poll() is not None:
            pytest.fail(f"the process ended before {what}:\n{p.communicate()[0][-3000:]}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    resource.prlimit(p.pid, resource.RLIMIT_FSIZE, (limit, limit))


def _steps(ckpts: Path) -> list[int]:
    """Finalized checkpoint steps (Orbax publishes a step by renaming its temporary)."""
    return sorted(int(d.name) for d in ckpts.iterdir() if d.name.isdigit()) if ckpts.is_dir() else []


def _entries(root: Path) -> list[str]:
    """Published token-cache entries (not their locks or builders' temporaries)."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and ".tmp-" not in d.name) \
        if root.is_dir() else []


_REFUSED = re.compile(r"cannot write checkpoint at step (\d+) in (\S+): File too large .*resumes "
                      r"from the checkpoint at step (\d+), which is intact")


# --------------------------------------------------------------------------- pretraining


def test_pretraining_survives_refused_writes_and_kills(tmp_path) -> None:
    """One run through every failure, in order, on a cold cache (one test: the stages build on
    each other, and pytest-xdist must not run them twice on two workers)."""
    work, cache = tmp_path / "run", tmp_path / "cache"
    env = {**cli_env(1), "TLM_CACHE_DIR": str(cache)}
    args = ["pretrain", "--workdir", str(work), *PRETRAIN]
    tokens, ckpts = cache / "tokens", work / "checkpoints"

    # 1. The storage refuses the token arrays (64 KiB per file from the start): one line, and the
    # entry is not published; the stages before it, under the limit, are published whole.
    line = _error_line(*_finish(_tlm([*args, "train.async_checkpoint=false"], env, CACHE_LIMIT)))
    assert f"cannot write the token cache in {tokens}: File too large" in line, line
    assert "ulimit -f" in line
    assert len(list((cache / "tokenizers").glob("*.json"))) == 1
    assert _entries(tokens) == [] and not list(tokens.glob("*.tmp-*"))

    # 2. SIGKILL while the token arrays are being written: nothing is published.
    p = _tlm(args, env)
    _kill_when(p, lambda: any(tokens.glob("*.tmp-*/train.bin")), "the token arrays being written")
    assert _entries(tokens) == [] and len(list(tokens.glob("*.tmp-*"))) == 1

    # 3. Synchronous checkpoints; the limit is lowered once the first one is on disk. The run
    # rebuilds the cache (removing the killed builder's temporary), then stops at a later save.
    p = _tlm([*args, "train.async_checkpoint=false"], env)
    _limit_when(p, lambda: bool(_steps(ckpts)), CKPT_LIMIT, "the first checkpoint")
    rc, out = _finish(p)
    assert "token cache built" in out, out[-3000:]
    assert len(_entries(tokens)) == 1 and not list(tokens.glob("*.tmp-*"))
    synced = _refused(rc, out, work, start=0)

    # 4. Asynchronous checkpoints, resumed: the same after its first checkpoint. Orbax raises the
    # refused write later; it surfaces at the next save (or the end) as the same line, naming
    # the step whose save failed.
    p = _tlm([*args, "train.async_checkpoint=true"], env)
    _limit_when(p, lambda: max(_steps(ckpts), default=0) > synced, CKPT_LIMIT,
                "the resumed run's first checkpoint")
    rc, out = _finish(p)
    assert f"resumed from checkpoint at step {synced}" in out, out[-3000:]
    last = _refused(rc, out, work, start=synced)

    # 5. No limit: resumes from the last intact checkpoint and finishes; the refused saves'
    # temporaries are gone and the metrics continue without gaps.
    rc, out = _finish(_tlm(args, env))
    assert rc == 0, out[-3000:]
    assert f"resumed from checkpoint at step {last}" in out
    assert _steps(ckpts) == [60] and not list(ckpts.glob("*tmp*"))
    assert [m["step"] for m in read_metrics(work)] == list(range(10, 61, 10))


def _refused(rc: int, out: str, work: Path, start: int) -> int:
    """Check a run stopped by a refused checkpoint (resumed at ``start``); the intact step."""
    line = _error_line(rc, out)
    m = _REFUSED.search(line)
    assert m, line
    failed, where, intact = int(m[1]), Path(m[2]), int(m[3])
    assert where == work.resolve() / "checkpoints" and "ulimit -f" in line
    # It got past a checkpoint of its own first, and the one it names is the one on disk.
    assert start < intact < failed, line
    assert _steps(work / "checkpoints") == [intact]
    return intact


def test_checkpoint_directory_that_is_a_file_is_one_line(tmp_path) -> None:
    from tlm_jax.errors import TLMError
    from tlm_jax.train.checkpoint import Checkpointer

    (tmp_path / "checkpoints").write_text("not a directory")
    with pytest.raises(TLMError, match="cannot open checkpoint directory"):
        Checkpointer(tmp_path / "checkpoints", every=1, keep=1, async_save=False)


def test_cache_directory_that_is_a_file_is_one_line(tmp_path, monkeypatch) -> None:
    from tlm_jax.config import load_config
    from tlm_jax.data.corpus import prepare_corpus
    from tlm_jax.errors import TLMError

    (tmp_path / "cache").write_text("not a directory")
    monkeypatch.setenv("TLM_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(TLMError, match=r"cannot write the subset plan in .*cache: Not a directory"):
        prepare_corpus(load_config(None, TINY).data, progress=False, log=lambda _: None)


# --------------------------------------------------------------------------- fine-tuning


# The random-init twin of a tiny model (no pretraining run needed); 28 training rows in batches of
# 8: 4 steps an epoch, 12 in all; the validation loss after each epoch (it falls at each:
# measured), each improvement saved to best/ before the step's checkpoint.
FINETUNE = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.intermediate=64",
            "model.max_len=32", "task.max_len=32", "task.text_columns=[text]",
            "task.label_column=label", "task.val_fraction=0.25", "train.batch_size=8",
            "train.epochs=3", "train.metric=loss", "optim.lr=3e-3", "train.checkpoint=true",
            "train.baseline=false"]
# What differs between two runs of the same seed: timings.
_TIMES = {"seconds", "train_seconds"}


def test_finetune_killed_inside_and_between_seeds_ends_as_if_uninterrupted(tmp_path) -> None:
    from tlm_jax.data.tokenizer import train_wordpiece

    csv = keyword_csv(tmp_path / "d.csv")
    tok = tmp_path / "tokenizer.json"
    train_wordpiece(csv.read_text().splitlines()[1:], 200).save(str(tok))

    def finetune(out: Path, seeds: str = "0,1") -> subprocess.Popen:
        return _tlm(["finetune", "--pretrained", "none", "--tokenizer-from", str(tok), "--task",
                     f"csv:{csv}", "--workdir", str(out), "--seeds", seeds, *FINETUNE])

    ref = finetune(tmp_path / "ref", "0")  # uninterrupted, alongside the killed runs
    try:
        work = tmp_path / "killed"
        seed0 = work / "seed_0"
        # Inside seed 0: right after a new best (not the first) is saved, i.e. while the step's
        # own checkpoint is written; the resumed seed replays that step and saves that best again.
        _kill_when(finetune(work), lambda: max(_steps(seed0 / "best"), default=0) >= 8,
                   "seed 0 saving its second best checkpoint")
        # Between seeds: as soon as seed 0's results are written.
        out = _kill_when(finetune(work), lambda: (seed0 / "results.json").is_file(), "seed 0's results")
        assert re.search(r"seed 0: resumed at step \d+", out), out[-3000:]
        rc, out = _finish(finetune(work))
        assert rc == 0, out[-3000:]
        assert "seed 0: finished earlier" in out
        rc, out = _finish(ref)
        assert rc == 0, out[-3000:]
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.communicate()
    want = json.loads((tmp_path / "ref" / "seed_0" / "results.json").read_text())
    got = json.loads((seed0 / "results.json").read_text())
    assert {k: v for k, v in got.items() if k not in _TIMES} == \
        {k: v for k, v in want.items() if k not in _TIMES}
    assert json.loads((work / "results.json").read_text())["seeds"] == [0, 1]
    assert (work / "seed_1" / "results.json").is_file()


# --------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT checkpoint as transformers lays it out (config.json, model.safetensors, vocab.txt)
    with random weights: 7.1 M parameters, so writing it (28 MB; 85 MB as a run's checkpoint with
    the optimizer state) takes long enough to be killed half-way."""
    import jax
    from safetensors.numpy import save_file

    from tlm_jax.config import load_config
    from tlm_jax.hf import model_config_to_hf, params_to_hf_state
    from tlm_jax.models import build_model, init_variables
    from tlm_jax.sharding import unbox

    d = tmp_path_factory.mktemp("hf_src")
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")
             + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + ["the", "city", "river"])
    m = load_config(None, ["model.hidden=384", "model.layers=4", "model.heads=6",
                           "model.intermediate=1536", "model.max_len=64", "data.max_len=64",
                           f"model.vocab_size={len(vocab)}"]).model
    shapes = jax.eval_shape(lambda r: unbox(init_variables(build_model(m), r, 64)),
                            jax.random.PRNGKey(0))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 0.02).astype(np.float32), shapes)
    save_file(params_to_hf_state(params, m, len(vocab)), str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(model_config_to_hf(m, len(vocab), 0)))
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return d


def test_killed_import_and_export_leave_nothing_half_written(hf_dir, tmp_path) -> None:
    from tlm_jax.hf import export_hf, read_safetensors

    run, out = tmp_path / "run", tmp_path / "hf"
    partial = lambda name: sorted(tmp_path.glob(f".{name}.partial-*"))  # noqa: E731
    # import-hf, killed while it writes the run's checkpoint: no run directory appears (one with
    # a config.json but no checkpoint would pretrain from random weights).
    _kill_when(_tlm(["import-hf", str(hf_dir), "--workdir", str(run)]),
               lambda: any(tmp_path.glob(".run.partial-*/checkpoints")), "import-hf's checkpoint")
    assert not run.exists() and len(partial("run")) == 1
    rc, log = _finish(_tlm(["import-hf", str(hf_dir), "--workdir", str(run)]))
    assert rc == 0, log[-3000:]
    assert partial("run") == []  # the killed import's leftovers are removed
    assert _steps(run / "checkpoints") == [0]
    # export-hf, killed while it writes the weights: no export directory appears.
    _kill_when(_tlm(["export-hf", str(run), "--out", str(out)]), lambda: bool(partial("hf")),
               "export-hf's files")
    assert not out.exists() and len(partial("hf")) == 1
    rc, log = _finish(_tlm(["export-hf", str(run), "--out", str(out)]))
    assert rc == 0, log[-3000:]
    assert partial("hf") == []
    want, got = read_safetensors(hf_dir / "model.safetensors"), read_safetensors(out / "model.safetensors")
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
    # --force into a directory with other files: they stay, ours are replaced, weights last.
    (out / "README.md").write_text("mine")
    (out / "model.safetensors").write_bytes(b"stale")
    export_hf(run, out, force=True, log=lambda _: None)
    assert (out / "README.md").read_text() == "mine" and partial("hf") == []
    got = read_safetensors(out / "model.safetensors")
    assert all(np.array_equal(got[k], want[k]) for k in want)
