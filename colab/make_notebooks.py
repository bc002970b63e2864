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
            "Pretrain a tiny BERT on the built-in synthetic corpus (no download), plot the loss "
            "from `metrics.jsonl`, then fine-tune it and a random-init twin on the built-in "
            "`synthetic` classification task and compare both with a TF-IDF baseline. Runs on "
            "a CPU runtime in minutes; `TLM_NOTEBOOK_SMALL=1` shrinks it to seconds. With "
            "`TLM_DATA_DIR` pointing at a data folder holding `wikipedia_en_excerpt/` and "
            "`ag_news/`, the full settings pretrain on Wikipedia and fine-tune on AG News "
            "instead."),
        new_code_cell(_install()),
        new_code_cell("import jax\n\nprint(jax.__version__, jax.devices())"),
        new_markdown_cell(
            "## Pretrain\n\nThe same as `tlm pretrain --workdir runs/quickstart key=value ...` "
            "on the command line. Rerunning the cell resumes from the newest checkpoint."),
        new_code_cell(f"""\
import json
import tempfile
from pathlib import Path

from tlm_jax.config import load_config
from tlm_jax.train.loop import pretrain

DATA_DIR = Path(os.environ.get("TLM_DATA_DIR") or "no-data-dir")
WIKI = DATA_DIR / "wikipedia_en_excerpt"
# Real data only in the full settings; small settings always stay offline.
REAL = not SMALL and WIKI.is_dir() and (DATA_DIR / "ag_news").is_dir()
TASK = "ag_news" if REAL else "synthetic"

overrides = ["model.preset=tiny", "train.progress=false", "train.tensorboard=false"]
if REAL:  # what `make quickstart` runs when TLM_DATA_DIR is set
    overrides += ["data.source=wikiextractor", "data.paths=" + json.dumps([f"{{WIKI}}/*.gz"]),
                  "data.subset=random", "data.num_docs=6000", "data.val_docs=200"]
else:
    overrides += ["data.source=synthetic", "data.synthetic_docs=4000", "data.vocab_size=4096"]
if SMALL:
    overrides += [
{SMALL_MODEL}
        "train.batch_size=8", "train.steps=6", "optim.lr=3e-3",
    ]
else:
    overrides += ["train.steps=300", "train.log_every=10", "train.eval_every=50",
                  "optim.lr=1e-3", "optim.warmup_steps=30"]
root = Path(tempfile.mkdtemp()) if SMALL else Path("runs")
workdir = root / ("quickstart-wiki" if REAL else "quickstart")
summary = pretrain(load_config(None, overrides), workdir)
print(summary["steps"], "steps; final train loss", summary["final_train_loss"])"""),
        new_markdown_cell("## The loss curve\n\nOne JSON record per logged step "
                          "(`split` is `train` or `val`)."),
        new_code_cell("""\
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
        new_markdown_cell(
            "## Fine-tune: pretrained vs random init\n\n"
            "The same as `tlm finetune --pretrained runs/quickstart --task synthetic ...` and its "
            "twin `tlm finetune --pretrained none --tokenizer-from runs/quickstart ...` (same "
            "architecture and vocabulary, random weights). `synthetic` is a task the package "
            "makes itself: which kind of article (person, city, team, season) a two-sentence "
            "passage comes from, the title sentence left out. Both runs see the same splits "
            "per seed; `results.json` also holds a TF-IDF + logistic-regression baseline on "
            "those splits. Few labels per class: where pretraining can matter."),
        new_code_cell("""\
from tlm_jax.tasks.finetune import finetune, load_finetune_config

ft = ["head.pooling=mean", "train.checkpoint=false", "train.batch_size=16", "optim.lr=1e-3"]
if SMALL:
    # val and test of one size (8 per class): one compiled prediction function serves both
    ft += ["task.train_per_class=32", "task.test_per_class=8", "task.val_fraction=0.25",
           "train.epochs=3", "train.eval_batch_size=64", "optim.lr=3e-3"]
    seeds = [0]
else:
    per_class = (["task.train_per_class=100", "task.test_per_class=250"] if REAL
                 else ["task.train_per_class=20", "task.test_per_class=250"])
    ft += [*per_class, "task.val_fraction=0.1", "task.max_len=64", "train.epochs=15",
           "train.patience=3", "train.metric=loss"]
    seeds = [0, 1, 2]
cfg = load_finetune_config(None, ft, task=TASK)
ft_dir = workdir.parent / f"{workdir.name}-finetune"
pre = finetune(cfg, workdir, ft_dir / "pretrained", seeds)
rand = finetune(cfg, None, ft_dir / "random-init", seeds, tokenizer_from=str(workdir))"""),
        new_code_cell("""\
bars = {"pretrained": pre["accuracy"], "random init": rand["accuracy"],
        "TF-IDF + LR": pre["baseline"]["accuracy"]}
for name, acc in bars.items():
    print(f"{name:>12}: {100 * acc['mean']:.1f} ± {100 * acc['ci95']:.1f} % "
          f"(test accuracy, {len(seeds)} seed(s))")
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.bar(list(bars), [100 * a["mean"] for a in bars.values()],
       yerr=[100 * a["ci95"] for a in bars.values()], capsize=4)
ax.axhline(100 / len(pre["label_names"]), ls="--", c="gray", label="chance")
ax.set_ylabel("test accuracy (%)")
ax.set_title(f"{TASK}: {pre['split_sizes']['train']} training examples")
ax.legend()
plt.show()
assert all(0.0 <= a["mean"] <= 1.0 for a in bars.values())"""),
    ]
    return new_notebook(cells=cells, metadata=_meta())


def soft_committee() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# A soft committee of one-layer models vs one deeper model\n\n"
            "`K` one-layer BERTs are pretrained independently (different seeds: initialisation "
            "and data order; one shared vocabulary), each is fine-tuned on the built-in "
            "`synthetic` task, and the committee predicts by averaging their softmax outputs. "
            "It is compared with one deeper model of comparable parameter count, pretrained and "
            "fine-tuned with the same budget, on accuracy and on measured inference latency at "
            "batch 1 and at a large batch. `python -m experiments.soft_committee` runs the same "
            "comparison on real tasks with confidence intervals over seeds. "
            "`TLM_NOTEBOOK_SMALL=1` shrinks it to seconds."),
        new_code_cell(_install()),
        new_markdown_cell(
            "## Pretrain the members and the deep model\n\n"
            "The first member trains the WordPiece vocabulary; every other run reuses its "
            "`tokenizer.json`. Rerunning the cell resumes (or skips) finished runs."),
        new_code_cell("""\
import tempfile
from pathlib import Path

from tlm_jax.config import load_config
from tlm_jax.train.loop import pretrain

K = 2  # committee members
base = ["data.source=synthetic", "model.preset=tiny", "train.progress=false",
        "train.tensorboard=false"]
if SMALL:
    base += ["model.hidden=32", "model.heads=2", "model.intermediate=64", "model.max_len=32",
             "data.max_len=32", "data.synthetic_docs=200", "data.vocab_size=500",
             "data.val_fraction=0.0", "train.batch_size=8", "train.steps=4", "optim.lr=3e-3",
             "optim.warmup_steps=2", "train.log_every=1"]
    deep_layers = 2
else:
    base += ["data.synthetic_docs=4000", "data.vocab_size=4096", "train.steps=300",
             "optim.lr=1e-3", "optim.warmup_steps=30", "train.log_every=50",
             "train.eval_every=100"]
    deep_layers = 6
root = Path(tempfile.mkdtemp()) / "committee" if SMALL else Path("runs/committee")
members = []
for s in range(K):
    extra = [f"data.tokenizer={members[0] / 'tokenizer.json'}"] if members else []
    run = root / f"member{s}"
    out = pretrain(load_config(None, [*base, "model.layers=1", f"train.seed={s}", *extra]), run,
                   log=lambda _: None)
    members.append(run)
    print(f"member {s}: {out['steps']} steps, final train loss {out['final_train_loss']:.3f}")"""),
        new_code_cell("""\
deep = root / f"deep{deep_layers}"
out = pretrain(load_config(None, [*base, f"model.layers={deep_layers}", "train.seed=0",
                                  f"data.tokenizer={members[0] / 'tokenizer.json'}"]), deep,
               log=lambda _: None)
print(f"deep ({deep_layers} layers): {out['steps']} steps, final train loss "
      f"{out['final_train_loss']:.3f}")"""),
        new_markdown_cell(
            "## Fine-tune every model on the same splits\n\n"
            "The same seeds give every model the same train/validation/test split, so the "
            "members' test predictions can be averaged row by row."),
        new_code_cell("""\
from tlm_jax.tasks.finetune import finetune, load_finetune_config

ft = ["head.pooling=mean", "train.checkpoint=false", "train.batch_size=16", "optim.lr=1e-3"]
if SMALL:
    # val and test of one size (8 per class): one compiled prediction function serves both
    ft += ["task.train_per_class=32", "task.test_per_class=8", "task.val_fraction=0.25",
           "train.epochs=2", "train.eval_batch_size=64", "optim.lr=3e-3"]
    seeds = [0]
else:
    ft += ["task.train_per_class=20", "task.test_per_class=250", "task.val_fraction=0.1",
           "task.max_len=64", "train.epochs=15", "train.patience=3", "train.metric=loss"]
    seeds = [0, 1, 2]
cfg = load_finetune_config(None, ft, task="synthetic")
results = {run.name: finetune(cfg, run, root / "finetune" / run.name, seeds, log=lambda _: None)
           for run in [*members, deep]}"""),
        new_markdown_cell(
            "## Accuracy\n\n`committee_scores` averages the members' softmax outputs "
            "(from each seed's `test_logits.npy`) for committees of the first 1..K members."),
        new_code_cell("""\
from tlm_jax.eval.committee import committee_scores
from tlm_jax.eval.metrics import mean_ci95

labels = results["member0"]["label_names"]
scores = committee_scores([root / "finetune" / m.name for m in members], seeds, labels)
member_params = results["member0"]["parameters"]
table = {f"member {i}": (results[m.name]["parameters"], results[m.name]["accuracy"])
         for i, m in enumerate(members)}
table[f"committee of {K}"] = (K * member_params,
                              mean_ci95([r["accuracy"] for r in scores[K]]))
table[f"deep ({deep_layers} layers)"] = (results[deep.name]["parameters"],
                                         results[deep.name]["accuracy"])
table["TF-IDF + LR"] = (None, results[deep.name]["baseline"]["accuracy"])
for name, (params, acc) in table.items():
    size = f"{params:>10,}" if params else " " * 10
    print(f"{name:>18} {size} params: {100 * acc['mean']:5.1f} ± {100 * acc['ci95']:.1f} %")
assert all(0.0 <= acc["mean"] <= 1.0 for _, acc in table.values())"""),
        new_markdown_cell(
            "## Inference latency on this runtime\n\n"
            "A jitted forward pass (classification logits) at the fine-tuning sequence length; "
            "the committee runs its members one after another. Median of repeats, in ms."),
        new_code_cell("""\
import json

import matplotlib.pyplot as plt

from tlm_jax.config import read_config
from tlm_jax.eval.committee import measure_latency

seed_result = root / "finetune" / "member0" / f"seed_{seeds[0]}" / "results.json"
length = json.loads(seed_result.read_text())["sequence_length"]  # the padded task length
batches = [1, 64] if SMALL else [1, 256]
latency = measure_latency(
    {f"committee of {K}": (read_config(members[0] / "config.json").model, K),
     f"deep ({deep_layers} layers)": (read_config(deep / "config.json").model, 1)},
    num_classes=len(labels), length=length, batches=batches, repeats=3 if SMALL else 20,
    log=print)
(cname, cres), (dname, dres) = latency.items()
for b in batches:
    ratio = cres[str(b)]["median_ms"] / dres[str(b)]["median_ms"]
    print(f"batch {b}: the committee takes {ratio:.2f}x the deep model's time")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].bar(list(table), [100 * acc["mean"] for _, acc in table.values()],
            yerr=[100 * acc["ci95"] for _, acc in table.values()], capsize=4)
axes[0].set_ylabel("test accuracy (%)")
axes[0].tick_params(axis="x", labelrotation=30)
width = 0.35
for i, (name, res) in enumerate(latency.items()):
    axes[1].bar([j + (i - 0.5) * width for j in range(len(batches))],
                [res[str(b)]["median_ms"] for b in batches], width, label=name)
axes[1].set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
axes[1].set_yscale("log")
axes[1].set_ylabel("median latency (ms, log)")
axes[1].legend()
fig.tight_layout()
plt.show()
assert all(res[str(b)]["median_ms"] > 0 for res in latency.values() for b in batches)"""),
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


NOTEBOOKS = {"quickstart.ipynb": quickstart, "soft_committee.ipynb": soft_committee,
             "tpu.ipynb": tpu}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` (a key of :data:`NOTEBOOKS`) exactly as :func:`main` writes it."""
    nb = NOTEBOOKS[name]()
    # Stable cell ids, so regenerating an unchanged notebook leaves its file unchanged.
    for i, cell in enumerate(nb.cells):
        cell.id = f"{Path(name).stem}-{i}"
    if name != "tpu.ipynb":
        nb.metadata.pop("accelerator")
    nbformat.validate(nb)
    return nb


def main() -> None:
    for name in NOTEBOOKS:
        nbformat.write(build(name), HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
