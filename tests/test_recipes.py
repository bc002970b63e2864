"""The paper's recipes in configs/ and multi-epoch training over a fixed article set."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tlm_jax.config import MODEL_PRESETS, load_config
from tlm_jax.data.cache import TokenArrays
from tlm_jax.data.pipeline import ExampleSource, ShardInfo, epoch_of, make_dataset, make_iterator
from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.train.run import total_steps

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER = sorted(p.stem for p in CONFIGS.glob("paper-*.yaml"))
CPU = sorted(p.stem for p in CONFIGS.glob("cpu-*.yaml"))
EXCERPT_DOCS = 36_183  # non-empty articles in $TLM_DATA_DIR/wikipedia_en_excerpt


def test_recipe_files_exist() -> None:
    assert {"paper-bert6-wiki20k", "paper-bert6-wiki40k", "paper-bert6-wiki90k",
            "paper-bert1-wiki40k"} <= set(PAPER)
    assert {"cpu-bert6-wiki", "cpu-bert1-wiki", "cpu-bert1-conv-wiki"} <= set(CPU)


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes(name: str) -> None:
    cfg = load_config(name)
    o, t, d = cfg.optim, cfg.train, cfg.data
    assert (o.lr, o.weight_decay, o.schedule, o.warmup_steps) == (5e-5, 0.01, "linear", 0)
    assert (t.batch_size, t.epochs, t.steps) == (32, 50, 0)
    assert (d.packing, d.max_len, cfg.model.max_len, d.subset) == ("truncate", 128, 128, "random")
    n_train = d.num_docs - d.val_docs
    assert f"wiki{n_train // 1000}k" in name
    assert cfg.model.preset in MODEL_PRESETS and name.startswith("paper-")
    if d.source == "wikiextractor":
        assert d.num_docs <= EXCERPT_DOCS and "wikipedia_en_excerpt" in d.paths[0]
    else:  # more articles than the excerpt holds: the full TFDS Wikipedia
        assert n_train > EXCERPT_DOCS - d.val_docs
        assert (d.source, d.tfds_name) == ("tfds", "wikipedia/20230601.en")
    # Steps follow from the epochs: 50 passes of the training articles at batch 32.
    assert total_steps(cfg, n_train) == math.ceil(50 * n_train / 32)


@pytest.mark.parametrize("name", CPU)
def test_cpu_recipes_keep_the_recipe_shape(name: str) -> None:
    cfg = load_config(name)
    assert cfg.model.preset.endswith("-cpu")
    assert cfg.model.hidden == 64 * cfg.model.heads  # the paper's head size
    assert (cfg.data.packing, cfg.data.max_len, cfg.train.batch_size) == ("truncate", 128, 32)
    assert cfg.data.source == "wikiextractor" and cfg.data.num_docs <= EXCERPT_DOCS
    assert cfg.train.steps == 0 and cfg.train.epochs > 1 and cfg.optim.schedule == "linear"
    assert total_steps(cfg, cfg.data.num_docs - cfg.data.val_docs) <= 400  # minutes on 2 cores


def test_finetune_recipes() -> None:
    finetune = pytest.importorskip("tlm_jax.tasks.finetune")
    expected = {"ag_news": (1000, 1000), "dbpedia": (100, 100), "fewrel": (630, 70)}
    for task, (tr, te) in expected.items():
        cfg = finetune.load_finetune_config(f"finetune-paper-{task}")
        assert (cfg.task.name, cfg.task.train_per_class, cfg.task.test_per_class) == (task, tr, te)
    for name in ("finetune-paper", *(f"finetune-paper-{t}" for t in expected)):
        cfg = finetune.load_finetune_config(name)
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule) == (5e-5, 0.01, "linear")
        assert cfg.train.batch_size == 32 and cfg.train.epochs == 50


# --------------------------------------------------------------------------- multi-epoch data

SP = SpecialTokens(pad=0, unk=1, cls=2, sep=3, mask=4, vocab_size=1000)


def _source(n: int) -> ExampleSource:
    """``n`` articles whose first token is 100 + their index (so batches name their articles)."""
    rng = np.random.default_rng(0)
    docs = [np.concatenate([[100 + i], rng.integers(5, 99, rng.integers(1, 20))]) for i in range(n)]
    return ExampleSource(TokenArrays.from_docs(docs), SP, max_len=8)


def _ids(batch: dict) -> list[int]:
    return [int(r[1]) - 100 for r in batch["input_ids"]]


def test_epochs_are_distinct_permutations_and_batches_cross_boundaries() -> None:
    n, b = 30, 8  # 30 / 8: batches straddle epoch boundaries
    ds = make_dataset(_source(n), b, seed=5, shard=ShardInfo())
    stream = [i for step in range(math.ceil(4 * n / b)) for i in _ids(ds[step])]
    epochs = [stream[k * n:(k + 1) * n] for k in range(4)]
    for e in epochs:
        assert sorted(e) == list(range(n))  # every article exactly once per epoch
    assert len({tuple(e) for e in epochs}) == 4  # reshuffled every epoch
    assert epochs[0] != list(range(n))
    # The logged epoch counter is the number of examples seen over the article count.
    assert epoch_of(15, b, n) == pytest.approx(4.0)


def test_resume_mid_epoch_gives_the_same_batches() -> None:
    n, b = 30, 8
    ds = make_dataset(_source(n), b, seed=5, shard=ShardInfo())
    it = make_iterator(ds)
    for _ in range(6):  # into the second epoch (6 * 8 = 48 examples)
        next(it)
    state = it.get_state()
    expected = [_ids(next(it)) for _ in range(6)]  # crosses into the third epoch
    it2 = make_iterator(make_dataset(_source(n), b, seed=5, shard=ShardInfo()))
    it2.set_state(state)
    assert [_ids(next(it2)) for _ in range(6)] == expected
    # ... and equal the uninterrupted order.
    assert expected == [_ids(ds[s]) for s in range(6, 12)]
