"""Hugging Face ``datasets`` as a pretraining source and a task; fields of any length in CSV files.

Every dataset is built here with ``Dataset.from_dict`` / ``DatasetDict`` and written with
``save_to_disk`` (or as JSONL files that ``load_dataset`` streams), then read through the
real code path: no network, no stand-ins for ``datasets``.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import REPO, cli_env

from tlm_jax.config import load_config
from tlm_jax.data.corpus import doc_factory, prepare_corpus, record_factory, source_key
from tlm_jax.data.hf_source import _import_datasets
from tlm_jax.data.sources import iter_documents, source_fingerprint, source_options
from tlm_jax.data.synthetic import SYNTHETIC_KINDS, synthetic_corpus, synthetic_labelled_texts
from tlm_jax.errors import TLMError
from tlm_jax.tasks import load_task
from tlm_jax.tasks.finetune import finetune, load_finetune_config, load_task_data, parse_task_arg
from tlm_jax.tasks.finetune.config import TaskConfig
from tlm_jax.tasks.readers import allow_any_field_size
from tlm_jax.train.loop import pretrain

TINY_PRE = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.intermediate=64",
            "model.max_len=32", "data.max_len=32", "data.vocab_size=600", "train.batch_size=16",
            "train.eval_every=0", "train.checkpoint_every=2", "train.progress=false",
            "train.tensorboard=false", "optim.warmup_steps=1", "train.log_every=1"]
BIG = 3 * 2**20  # a field of 3 MiB: 24x the csv module's default limit of 131,072 characters


def _save(ds: datasets.Dataset | datasets.DatasetDict, path: Path) -> Path:
    ds.save_to_disk(str(path))
    return path


def _corpus_dict(docs: list[str]) -> datasets.DatasetDict:
    """Pretraining text in ``train``, a held-out ``test`` split, and an extra column."""
    return datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": docs, "id": list(range(len(docs)))}),
        "test": datasets.Dataset.from_dict({"text": docs[:5], "id": list(range(5))}),
    })


def _task_dict(per_class: int = 12) -> datasets.DatasetDict:
    """The synthetic article-kind task with ClassLabel names in generator (not sorted) order."""
    features = datasets.Features({"body": datasets.Value("string"),
                                  "title": datasets.Value("string"),
                                  "kind": datasets.ClassLabel(names=list(SYNTHETIC_KINDS))})
    rows = list(synthetic_labelled_texts(per_class, window=1))
    split: dict[str, dict[str, list]] = {s: {"body": [], "title": [], "kind": []}
                                         for s in ("train", "test")}
    for i, (kind, text) in enumerate(rows):
        part = split["test" if (i // 4) % 6 == 0 else "train"]  # rounds 0 and 6: 2 rows per kind
        part["body"].append(text)
        part["title"].append(f"row {i}")
        part["kind"].append(SYNTHETIC_KINDS.index(kind))
    return datasets.DatasetDict({s: datasets.Dataset.from_dict(d, features=features)
                                 for s, d in split.items()})


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return _save(_corpus_dict(list(synthetic_corpus(240, 0))), tmp_path_factory.mktemp("hf") / "corpus")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return _save(_task_dict(), tmp_path_factory.mktemp("hf") / "task")


@pytest.fixture(scope="module")
def hf_run(corpus_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """A 4-step pretraining run whose documents come from the saved dataset folder."""
    work = tmp_path_factory.mktemp("run") / "hf"
    overrides = [*TINY_PRE, "data.source=hf", f"data.hf_path={corpus_dir}", "train.steps=4"]
    pretrain(load_config(None, overrides), work, log=lambda _: None)
    return work, overrides


# ----------------------------------------------------------------------------
# Pretraining on a datasets folder
# ----------------------------------------------------------------------------


def test_pretrain_reads_the_saved_dataset_in_order(hf_run, corpus_dir, tmp_path) -> None:
    work, overrides = hf_run
    cfg = load_config(None, overrides)
    docs = list(synthetic_corpus(240, 0))
    assert list(doc_factory(cfg.data)()) == docs
    # The row's other columns travel as the document's metadata (for curation filters).
    first = next(iter(record_factory(cfg.data)()))
    assert first.text == docs[0] and first.meta == {"id": 0}
    # The run's token cache is keyed by the dataset's content fingerprint.
    info = json.loads((work / "data_info.json").read_text())
    meta = json.loads((Path(info["cache_dir"]) / "meta.json").read_text())
    assert meta["source_key"] == source_key(cfg.data) == source_fingerprint(
        "hf", [], **source_options(cfg.data))
    assert info["train_docs"] + info["val_docs"] == 240
    summary = json.loads((work / "summary.json").read_text())
    assert summary["steps"] == 4 and np.isfinite(summary["final_val"]["loss"])
    # Another split of the same folder is another source.
    test_split = load_config(None, [*overrides, "data.hf_split=test"]).data
    assert list(doc_factory(test_split)()) == docs[:5]
    assert source_key(test_split) != source_key(cfg.data)


def test_source_key_follows_the_content_not_the_folder(corpus_dir, tmp_path, monkeypatch) -> None:
    docs = list(synthetic_corpus(240, 0))
    key = source_fingerprint("hf", [], hf_path=str(corpus_dir))
    # The same rows saved again elsewhere: the same key (save_to_disk writes the same bytes).
    same = _save(_corpus_dict(docs), tmp_path / "moved")
    assert source_fingerprint("hf", [], hf_path=str(same)) == key
    # One document changed: a new key, so no cached plan, tokenizer or tokens are reused.
    changed = _save(_corpus_dict([*docs[:-1], docs[-1] + " edited"]), tmp_path / "changed")
    assert source_fingerprint("hf", [], hf_path=str(changed)) != key
    # Reading options are part of the key as for every source.
    assert source_fingerprint("hf", [], hf_path=str(corpus_dir), min_chars=5) != key
    # A relative folder is also looked up under $TLM_DATA_DIR, like file paths.
    monkeypatch.setenv("TLM_DATA_DIR", str(tmp_path))
    assert source_fingerprint("hf", [], hf_path="moved") == key


def test_streamed_data_files_through_load_dataset(tmp_path) -> None:
    folder = tmp_path / "jsonl"
    folder.mkdir()
    rows = [{"text": f"document number {i} about rivers", "lang": "en"} for i in range(30)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = {"hf_path": str(folder), "hf_streaming": True}
    assert list(iter_documents("hf", [], **opts)) == [r["text"] for r in rows]
    key = source_fingerprint("hf", [], **opts)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    assert source_fingerprint("hf", [], **opts) != key
    with pytest.raises(TLMError, match=r"no column 'body' \(columns: text, lang\)"):
        list(iter_documents("hf", [], text_field="body", **opts))
    with pytest.raises(TLMError, match=r"no split 'validation' \(splits: train\).*hf_split"):
        list(iter_documents("hf", [], hf_split="validation", **opts))


def test_pretraining_source_errors_are_one_line(corpus_dir, tmp_path) -> None:
    (tmp_path / "elsewhere").mkdir()
    cases = [
        ({"hf_path": str(tmp_path / "missing")}, r"missing does not exist \(.* holds: elsewhere\)"),
        ({"hf_path": str(corpus_dir), "hf_split": "validation"},
         r"no split 'validation' \(splits: train, test\) \(fix: set data.hf_split"),
        ({"hf_path": str(corpus_dir), "text_field": "body"},
         r"no column 'body' \(columns: text, id\) \(fix: set data.text_field"),
        ({"hf_path": str(corpus_dir), "hf_name": "en"}, r"config .en. does not apply"),
        ({"hf_path": str(corpus_dir / "train" / "state.json")}, "is a file, not a Hugging Face dataset"),
        ({"hf_path": ""}, "needs hf_path"),
    ]
    for options, pattern in cases:
        with pytest.raises(TLMError, match=pattern) as err:
            iter_documents("hf", [], **options)
        assert "\n" not in str(err.value)
    # Errors name at most a few entries of a crowded folder.
    crowded = tmp_path / "crowded"
    for i in range(30):
        (crowded / f"shard{i:02d}").mkdir(parents=True)
    with pytest.raises(TLMError, match=r"shard07, \.\.\. \(30 in all\)"):
        iter_documents("hf", [], hf_path=str(crowded / "nope"))


def test_cli_pretrain_error_has_no_traceback(tmp_path) -> None:
    cmd = [sys.executable, "-m", "tlm_jax.cli", "pretrain", "--workdir", str(tmp_path / "w"),
           "data.source=hf", f"data.hf_path={tmp_path / 'no_such_dataset'}"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=cli_env(1), timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "no_such_dataset does not exist" in lines[0]
    assert "Traceback" not in p.stdout + p.stderr


def test_missing_library_names_the_extra(monkeypatch) -> None:
    # A None entry in sys.modules makes `import datasets` raise ImportError, as if absent.
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(TLMError, match=r'pip install -e "\.\[hf\]"'):
        _import_datasets()


# ----------------------------------------------------------------------------
# Fine-tuning tasks: hf:PATH[:CONFIG]
# ----------------------------------------------------------------------------


def test_task_uses_classlabel_names_and_the_dataset_splits(task_dir) -> None:
    tc = TaskConfig(**{**parse_task_arg(f"hf:{task_dir}"), "text_columns": ["title", "body"],
                       "label_column": "kind", "val_fraction": 0.0})
    assert tc.name == "hf" and tc.path == str(task_dir) and tc.hf_name == ""
    data = load_task_data(tc, seed=0)
    assert data.label_names == list(SYNTHETIC_KINDS)  # ClassLabel order, not sorted
    assert data.sizes() == {"train": 40, "val": 0, "test": 8}
    raw = datasets.load_from_disk(str(task_dir))
    assert data.provenance["hf"]["splits"] == {"train": "train", "test": "test"}
    # Text columns are joined like a generic file's; labels are the ClassLabel indices.
    for text, label, row in zip(data.test_texts, data.test_labels, data.test_rows, strict=True):
        rec = raw["test"][int(row)]
        assert text == f"{rec['title']} . {rec['body']}" and label == rec["kind"]
    # One named split is divided here.
    one = load_task("hf", path=str(task_dir), text_columns=["body"], label_column="kind",
                    splits=["train"], test_fraction=0.25)
    assert one.sizes()["train"] + one.sizes()["test"] == 40


def test_task_without_classlabel_and_a_lone_dataset(tmp_path) -> None:
    texts = [f"{w} match report {i}" for i in range(10) for w in ("goal", "vote")]
    stars = ["5" if t.startswith("goal") else "1" for t in texts]
    lone = _save(datasets.Dataset.from_dict({"review": texts, "stars": stars}), tmp_path / "lone")
    data = load_task(f"hf:{lone}", text_columns=["review"], label_column="stars", seed=1)
    assert data.label_names == ["1", "5"] and sum(data.sizes().values()) == 20
    assert data.provenance["label_map"].startswith("sorted unique values")
    cfg = load_finetune_config(None, ["task.text_columns=[review]", "task.label_column=stars"],
                               task=f"hf:{lone}")
    assert load_task_data(cfg.task, 0).label_names == ["1", "5"]


def test_task_errors_are_one_line(task_dir, tmp_path) -> None:
    unlabelled = _task_dict(4)
    unlabelled["test"] = unlabelled["test"].map(lambda r: {"kind": -1})
    unlabelled_dir = _save(unlabelled, tmp_path / "unlabelled")
    triple = _save(datasets.DatasetDict({s: _task_dict(4)["train"] for s in ("a", "b", "c")}),
                   tmp_path / "triple")
    cases = [
        ({"path": str(tmp_path / "nope")}, r"nope does not exist \(.* holds: .*triple"),
        ({"path": str(task_dir), "splits": ["train", "dev"]},
         r"no split 'dev' \(splits: train, test\) \(fix: set task.hf_splits"),
        ({"path": str(task_dir), "text_columns": ["text"]},
         r"no column 'text' \(columns: body, title, kind\) \(fix: set task.text_columns"),
        ({"path": str(task_dir), "text_columns": ["body"], "label_column": "label"},
         r"no column 'label' \(columns: body, title, kind\) \(fix: set task.label_column"),
        ({"path": str(unlabelled_dir), "text_columns": ["body"], "label_column": "kind"},
         r"split 'test' has \d+ rows whose 'kind' is not one of its 4 ClassLabel values"),
        ({"path": str(triple), "text_columns": ["body"], "label_column": "kind"},
         r"splits a, b, c and no train/test pair"),
    ]
    for options, pattern in cases:
        with pytest.raises(TLMError, match=pattern) as err:
            load_task("hf", **options)
        assert "\n" not in str(err.value)


def test_finetune_on_an_hf_task(hf_run, task_dir, tmp_path) -> None:
    work, _ = hf_run
    cfg = load_finetune_config(None, [
        "task.text_columns=[body]", "task.label_column=kind", "task.val_fraction=0.25",
        "train.batch_size=8", "train.epochs=1", "optim.lr=1e-3", "train.baseline=false",
        "train.checkpoint=false"], task=f"hf:{task_dir}")
    res = finetune(cfg, work, tmp_path / "ft", [0], log=lambda _: None)
    assert res["label_names"] == list(SYNTHETIC_KINDS)
    assert res["split_sizes"] == {"train": 28, "val": 12, "test": 8}
    assert 0.0 <= res["accuracy"]["mean"] <= 1.0


# ----------------------------------------------------------------------------
# Fields of any length in delimited files, and long documents in every source
# ----------------------------------------------------------------------------


def _long_text(n_chars: int) -> str:
    """About ``n_chars`` of words with the characters CSV must quote (comma, quote, newline)."""
    unit = 'river, city, season\nteam "club" album film school '
    return (unit * (n_chars // len(unit) + 1)).strip()


def test_task_csv_with_a_multi_megabyte_field(tmp_path) -> None:
    path = tmp_path / "newsgroups.csv"
    long = _long_text(BIG)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        for i in range(12):
            w.writerow(["sci" if i % 2 else "rec", long if i == 3 else f"post {i} about cars"])
    # A fresh process: Python's default limit, not yet lifted. The csv module alone fails.
    csv.field_size_limit(131072)
    allow_any_field_size.cache_clear()
    with open(path, newline="", encoding="utf-8") as f, pytest.raises(
            csv.Error, match=r"field larger than field limit \(131072\)"):
        list(csv.reader(f))
    # The fine-tuning path: --task csv:PATH -> task settings -> the task's texts.
    tc = TaskConfig(**{**parse_task_arg(f"csv:{path}"), "text_columns": ["text"],
                       "label_column": "label", "val_fraction": 0.0})
    data = load_task_data(tc, seed=0)
    texts = data.train_texts + data.test_texts
    assert len(texts) == 12 and max(map(len, texts)) > BIG - 10
    assert " ".join(long.split()) in texts
    assert csv.field_size_limit() > BIG


def test_pretraining_sources_with_a_multi_megabyte_document(tmp_path) -> None:
    long = _long_text(BIG).replace("\n", " ")
    short = [f"short document {i} about the river and the city" for i in range(40)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in [*short[:20], long, *short[20:]]))
    lines = tmp_path / "docs.txt"
    lines.write_text("\n".join([*short[:20], long, *short[20:]]) + "\n")
    folder = _save(datasets.Dataset.from_dict({"text": [*short[:20], long, *short[20:]]}), tmp_path / "hf")
    for kind, paths, extra in (("jsonl", [str(jsonl)], {}), ("lines", [str(lines)], {}),
                               ("hf", [], {"hf_path": str(folder)})):
        docs = list(iter_documents(kind, paths, **extra))
        assert len(docs) == 41 and docs[20] == long, kind
    # The pretraining path (plan, token cache) over the long document; a fixed vocabulary
    # keeps WordPiece training out of the test's time.
    vocab = tmp_path / "vocab.txt"
    words = sorted(set(" ".join([long[:1000], *short]).replace(",", " , ").replace('"', ' " ').split()))
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    cfg = load_config(None, ["data.source=jsonl", f"data.paths=[{jsonl}]", f"data.tokenizer={vocab}",
                             "data.max_len=32", "data.val_docs=4",
                             f"data.cache_dir={tmp_path / 'cache'}"]).data
    corpus = prepare_corpus(cfg, progress=False, log=lambda _: None)
    assert corpus.info["train_docs"] + corpus.info["val_docs"] == 41
    # The long document is in the token cache whole (examples are cut to max_len later).
    lengths = [len(corpus.train.doc(i)) for i in range(corpus.info["train_docs"])]
    assert max(lengths) > BIG // 10


def test_copied_folder_reads_the_same(corpus_dir, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(corpus_dir, copy)
    assert list(iter_documents("hf", [], hf_path=str(copy))) == list(
        iter_documents("hf", [], hf_path=str(corpus_dir)))
