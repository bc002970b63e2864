"""The Colab notebooks run top to bottom on CPU with small settings (TLM_NOTEBOOK_SMALL=1)."""

from __future__ import annotations

import importlib.util
import os

import nbformat
import pytest
from conftest import REPO, xla_flags
from nbclient import NotebookClient

NOTEBOOKS = sorted((REPO / "colab").glob("*.ipynb"))


def test_notebooks_are_generated() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "soft_committee.ipynb", "tpu.ipynb"}
    for p in NOTEBOOKS:
        nbformat.validate(nbformat.read(p, as_version=4))
    # The committed files are what colab/make_notebooks.py writes (rerun it after editing).
    spec = importlib.util.spec_from_file_location("make_notebooks", REPO / "colab" / "make_notebooks.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert sorted(gen.NOTEBOOKS) == [p.name for p in NOTEBOOKS]
    for p in NOTEBOOKS:
        assert nbformat.read(p, as_version=4) == gen.build(p.name), f"{p.name} is stale"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch) -> None:
    # The kernel inherits this environment: small settings, 1 CPU device, no GUI backend.
    monkeypatch.setenv("TLM_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("XLA_FLAGS", xla_flags(1))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(path, as_version=4)
    # A per-cell limit against hangs; generous because shared, loaded CI cores can make a
    # cell that pretrains two tiny runs take minutes.
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
