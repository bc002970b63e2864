"""Test set-up: 8 forced CPU devices, a per-session token cache, the data directory."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
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
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env
