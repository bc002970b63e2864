"""Test set-up: 8 forced CPU devices, a per-session token cache, the data directory."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

# Test programs are tiny, so XLA's compile time dominates the suite: LLVM at -O0 cuts a
# heavy end-to-end test by ~25 % (94.7 -> 70.2 s for two of them) and changes no semantics
# (optimisation level, not fast-math). ``TLM_TEST_FAST_COMPILE=0`` compiles as users do.
COMPILE_FLAGS = ("" if os.environ.get("TLM_TEST_FAST_COMPILE", "1") == "0"
                 else "--xla_backend_optimization_level=0")


def xla_flags(devices: int) -> str:
    """``XLA_FLAGS`` for a test process with ``devices`` forced CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {COMPILE_FLAGS}".strip()


# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("TLM_CACHE_DIR", tempfile.mkdtemp(prefix="tlm-test-cache-"))
REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TLM_DATA_DIR", str(REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO))

import pytest  # noqa: E402

DATA_DIR = Path(os.environ["TLM_DATA_DIR"])
WIKI = DATA_DIR / "wikipedia_en_excerpt"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data directory (``TLM_DATA_DIR``); tests needing it fail loudly if absent."""
    if not DATA_DIR.is_dir():
        pytest.fail(f"TLM_DATA_DIR={DATA_DIR} does not exist; point it at shared/data")
    return DATA_DIR


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory: pytest.TempPathFactory):
    """One persistent XLA cache for the whole session (and its ``tlm`` subprocesses).

    Many tests compile identical programs (the same tiny model's train / eval steps); from
    the second on they are loaded instead of compiled. ``TLM_TEST_COMPILE_CACHE=0`` turns
    it off (to check that nothing depends on it).
    """
    if os.environ.get("TLM_TEST_COMPILE_CACHE", "1") == "0":
        yield None
        return
    import jax  # noqa: PLC0415

    path = tmp_path_factory.mktemp("jax-cache")
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"
    yield path


def cli_env(devices: int = 1) -> dict[str, str]:
    """Environment for a ``tlm`` subprocess with ``devices`` CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(devices)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def tiny_experiment_preset(steps: int, docs: int) -> Any:
    """The ``cpu`` experiment preset shrunk for tests: a hidden-32 one-layer model, ``steps``
    pretraining steps of batch 8 on ``docs`` Wikipedia articles, one fine-tuning epoch on 8
    AG News texts per class."""
    import dataclasses  # noqa: PLC0415

    from experiments import common as C  # noqa: PLC0415

    return dataclasses.replace(
        C.PRESETS["cpu"], name="tiny", pretrain_steps=steps, pretrain_batch=8, warmup_steps=1,
        vocab_size=1000, max_len=32, gap_docs=docs,
        shallow_model=("model.preset=tiny", "model.layers=1", "model.hidden=32",
                       "model.heads=2", "model.intermediate=64"),
        tasks={"ag_news": {"train_per_class": 8, "test_per_class": 8}},
        finetune=("optim.lr=1e-3", "train.batch_size=8", "train.epochs=1", "train.patience=0",
                  "task.val_fraction=0.25", "task.max_len=32", "train.eval_batch_size=32",
                  "head.pooling=mean"))


def train_random_mlm(cfg: Any, special: Any, steps: int, *, weight_decay: float = 0.1,
                     mesh_shape: tuple[int, int, int] = (1, 1, 1),
                     checkpoint_dir: Path | None = None) -> tuple[Any, Any, Any]:
    """``steps`` AdamW (lr 1e-2, no warmup) MLM steps of model config ``cfg`` on random ids
    (8 rows), sharded over a ``mesh_shape`` mesh; returns the (initial, trained, restored) host
    states, ``restored`` from an Orbax round trip into ``checkpoint_dir`` (None: skipped)."""
    import dataclasses  # noqa: PLC0415

    import flax.linen as nn  # noqa: PLC0415
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from tlm_jax import sharding as shd  # noqa: PLC0415
    from tlm_jax.config import ObjectiveConfig, load_config  # noqa: PLC0415
    from tlm_jax.models import build_model  # noqa: PLC0415
    from tlm_jax.objectives import build_objectives  # noqa: PLC0415
    from tlm_jax.train.checkpoint import Checkpointer  # noqa: PLC0415
    from tlm_jax.train.optimizer import make_optimizer  # noqa: PLC0415
    from tlm_jax.train.state import create_state, state_shardings  # noqa: PLC0415
    from tlm_jax.train.step import make_train_step  # noqa: PLC0415

    model = build_model(cfg)
    objectives = build_objectives(ObjectiveConfig(), special, cfg.max_len)
    tx, schedule = make_optimizer(dataclasses.replace(
        load_config().optim, lr=1e-2, warmup_steps=0, weight_decay=weight_decay), steps)
    mesh = shd.make_mesh(*mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        state, shardings = create_state(model, tx, mesh, 0, cfg.max_len)
        first = jax.device_get(state)
        step = jax.jit(make_train_step(model, objectives, tx, schedule),
                       in_shardings=(shardings, None), out_shardings=(shardings, None))
        rng = np.random.default_rng(0)
        for _ in range(steps):
            batch = {"input_ids": rng.integers(5, 128, (8, cfg.max_len)).astype(np.int32),
                     "index": np.arange(8, dtype=np.int32)}
            batch = {k: jax.device_put(v, shd.batch_sharding(mesh, v.ndim))
                     for k, v in batch.items()}
            state, metrics = step(state, batch)
            assert np.isfinite(float(metrics["loss"]))
        trained = jax.device_get(state)
        if checkpoint_dir is None:
            return first, trained, None
        ck = Checkpointer(checkpoint_dir, every=1, keep=1, async_save=False)
        ck.save(steps, state, {}, {}, force=True)
        ck.wait()
        abstract, _ = state_shardings(model, tx, mesh, cfg.max_len)
        restored = jax.device_get(ck.restore(abstract, shardings)[1])
        ck.close()
    return first, trained, restored


def jaxpr_dots(fn: Any, *args: Any) -> list:
    """Every dot_general of ``fn``'s jaxpr (custom-VJP bodies included)."""
    import jax  # noqa: PLC0415

    out = []

    def walk(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name == "dot_general":
                out.append(e)
            for p in e.params.values():
                for sub in (p if isinstance(p, (list, tuple)) else [p]):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return out


def reference_attention(qkv: Any, allowed: Any, keep: Any, keep_prob: float) -> Any:
    """Plain float32 attention of ``qkv [b, s, 3, h, d]``, for JAX to differentiate."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    x = qkv.astype(jnp.float32)
    q, k, v = x[:, :, 0], x[:, :, 1], x[:, :, 2]
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
    p = jax.nn.softmax(jnp.where(allowed, s, jnp.finfo(jnp.float32).min), axis=-1)
    if keep is not None:
        p = jnp.where(keep, p / keep_prob, 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v)


def attention_inputs(shape: tuple[int, int, int, int], pad: int, keep_prob: float,
                     causal: bool, dropout: bool, seed: int = 0) -> tuple:
    """``(qkv f32, valid [b, s], allowed, keep or None, g, key)`` for attention tests.

    The second sequence has its last ``pad`` positions padded.
    """
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    b, s, h, d = shape
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    qkv = jax.random.normal(k1, (b, s, 3, h, d), jnp.float32)
    valid = jnp.arange(s)[None, :] < jnp.array([s] + [s - pad] * (b - 1))[:, None]
    allowed = valid[:, None, None, :]
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((s, s), bool))[None, None]
    keep = jax.random.bernoulli(k2, keep_prob, (b, h, s, s)) if dropout else None
    g = jax.random.normal(k3, (b, s, h, d), jnp.float32)
    return qkv, valid, allowed, keep, g, k4


def keyword_csv(path: Path, n_per_class: int = 24) -> Path:
    """A 2-column CSV (text,label) whose label is given away by a keyword (fine-tuning tests)."""
    import numpy as np

    rng = np.random.default_rng(0)
    filler = ["the", "city", "club", "season", "league", "team", "river", "album", "film", "school"]
    rows = ["text,label"]
    for i in range(n_per_class):
        for label, word in (("pos", "good"), ("neg", "bad")):
            words = list(rng.choice(filler, 6)) + [word] * 3
            rng.shuffle(words)
            rows.append(f"{' '.join(words)} {i},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path
