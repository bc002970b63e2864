"""Write the Colab notebooks of this folder (``python colab/make_notebooks.py``).

The notebooks are generated so they stay small and reviewable; edit the cells
here, rerun, and commit the ``.ipynb`` files. Every notebook reads
``TLM_NOTEBOOK_SMALL=1`` (set by ``tests/test_notebooks.py``) to run top to
bottom on a CPU in seconds.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
REPO_SPEC = "git+https://github.com/OWNER/tlm_jax.git"  # the lead sets the public URL

INSTALL = """# Install tlm_jax unless it is already importable (it is, in this repo's CI).
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("tlm_jax") is None:
    pkgs = ["REPO_SPEC"EXTRA]
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *pkgs])
SMALL = os.environ.get("TLM_NOTEBOOK_SMALL") == "1"  # CI: tiny settings
print("small settings" if SMALL else "full settings")"""

SMALL_MODEL = """\
        "model.hidden=32", "model.layers=1", "model.heads=2", "model.intermediate=64",
        "model.max_len=32", "data.max_len=32", "data.synthetic_docs=200", "data.vocab_size=500",
        "data.val_fraction=0.0", "train.log_every=1", "optim.warmup_steps=2","""


def _install(extra: str = "") -> str:
    return INSTALL.replace("REPO_SPEC", REPO_SPEC).replace("EXTRA", extra)


def quickstart() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# tlm_jax quickstart\n\n"
            "Pretrain a tiny BERT on the built-in synthetic corpus (no download), then plot "
            "the loss from `metrics.jsonl`. Runs on a CPU runtime in a few minutes; "
            "`TLM_NOTEBOOK_SMALL=1` shrinks it to seconds."),
        new_code_cell(_install()),
        new_code_cell("import jax\n\nprint(jax.__version__, jax.devices())"),
        new_markdown_cell(
            "## Pretrain\n\nThe same as `tlm pretrain --workdir runs/quickstart key=value ...` "
            "on the command line. Rerunning the cell resumes from the newest checkpoint."),
        new_code_cell(f"""\
import tempfile
from pathlib import Path

from tlm_jax.config import load_config
from tlm_jax.train.loop import pretrain

overrides = ["data.source=synthetic", "model.preset=tiny", "train.progress=false",
             "train.tensorboard=false"]
if SMALL:
    overrides += [
{SMALL_MODEL}
        "train.batch_size=8", "train.steps=6", "optim.lr=3e-3",
    ]
else:
    overrides += ["train.steps=300", "train.log_every=10", "train.eval_every=50"]
workdir = Path(tempfile.mkdtemp()) / "quickstart" if SMALL else Path("runs/quickstart")
summary = pretrain(load_config(None, overrides), workdir)
print(summary["steps"], "steps; final train loss", summary["final_train_loss"])"""),
        new_markdown_cell("## The loss curve\n\nOne JSON record per logged step "
                          "(`split` is `train` or `val`)."),
        new_code_cell("""\
import json

import matplotlib.pyplot as plt

records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
train = [r for r in records if r["split"] == "train"]
val = [r for r in records if r["split"] == "val"]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val")
ax.set_xlabel("step")
ax.set_ylabel("loss")
ax.legend()
plt.show()
assert len(train) >= 2 and all(r["loss"] == r["loss"] for r in train)"""),
    ]
    return new_notebook(cells=cells, metadata=_meta())


def tpu() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# tlm_jax on a Colab TPU\n\n"
            "Runtime -> Change runtime type -> TPU. The notebook detects the accelerator, "
            "picks a mesh for the device count, sizes the train state per device with "
            "`tlm mem`'s helper, and pretrains on that mesh. On a CPU it runs the same "
            "code on the CPU devices."),
        new_code_cell(_install(', "jax[tpu]"') + "\n"
                      "# (on a TPU runtime: restart the runtime once after installing jax[tpu])"),
        new_code_cell("""\
import jax

platform = jax.devices()[0].platform
n = jax.device_count()
print(f"{n} x {platform}:", jax.devices()[0].device_kind)"""),
        new_markdown_cell(
            "## Pick a mesh\n\nSmall models: pure data parallelism. BERT-6-sized and up on "
            "many chips: shard parameters and optimizer state over `fsdp` (ZeRO-3) and keep "
            "the rest as `data`. `tensor` splits heads/MLP/vocabulary and pays off only for "
            "wide layers."),
        new_code_cell("""\
preset = "tiny" if SMALL or platform == "cpu" else "bert-6"
if platform == "tpu" and preset != "tiny" and n >= 4:
    mesh = dict(data=n // 4, fsdp=4, tensor=1)
else:
    mesh = dict(data=n, fsdp=1, tensor=1)
batch = 8 * n if SMALL else 32 * n
print(preset, mesh, "global batch", batch)"""),
        new_code_cell("""\
from tlm_jax.commands.mem import format_report, memory_report
from tlm_jax.config import load_config

# Params + AdamW mu/nu per device for a BERT-6 on this mesh and on an 8-way fsdp mesh.
for m in (mesh, dict(data=1, fsdp=8, tensor=1)):
    size = m["data"] * m["fsdp"] * m["tensor"]
    cfg = load_config(None, ["model.preset=bert-6", "data.vocab_size=30522",
                             f"train.batch_size={8 * max(n, 8)}"])
    print(format_report(memory_report(cfg, m, devices=size)), end="\\n\\n")"""),
        new_markdown_cell("## Pretrain on the mesh"),
        new_code_cell(f"""\
import tempfile
from pathlib import Path

from tlm_jax.train.loop import pretrain

overrides = [f"model.preset={{preset}}", f"train.batch_size={{batch}}",
             *(f"mesh.{{k}}={{v}}" for k, v in mesh.items()),
             "train.progress=false", "train.tensorboard=false"]
if platform == "tpu":
    overrides += ["model.dtype=bfloat16"]
if SMALL:
    overrides += [
{SMALL_MODEL}
        "train.steps=4",
    ]
else:
    overrides += ["train.steps=2000", "train.log_every=50"]
workdir = Path(tempfile.mkdtemp()) / "tpu" if SMALL else Path("runs/tpu")
summary = pretrain(load_config(None, overrides), workdir)
print(summary["steps"], "steps in", summary["seconds"], "s; final loss", summary["final_train_loss"])"""),
    ]
    return new_notebook(cells=cells, metadata=_meta())


def _meta() -> dict:
    return {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
            "accelerator": "TPU", "colab": {"provenance": []}}


NOTEBOOKS = {"quickstart.ipynb": quickstart, "tpu.ipynb": tpu}


def main() -> None:
    for name, build in NOTEBOOKS.items():
        nb = build()
        if name != "tpu.ipynb":
            nb.metadata.pop("accelerator")
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
