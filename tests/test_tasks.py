"""Tests of the classification task loaders and the shared splitter, on the real data."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tlm_jax.errors import TLMError
from tlm_jax.tasks import (
    TASKS,
    ClassificationData,
    clean_ag_news_text,
    load_ag_news,
    load_dbpedia,
    load_fewrel,
    load_generic,
    load_task,
    load_tfds_classification,
    mark_entities,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("TLM_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data")))

needs_data = pytest.mark.skipif(
    not (DATA_DIR / "ag_news").is_dir(), reason=f"shared data not found at {DATA_DIR}"
)


def per_class(data: ClassificationData, split: str) -> list[int]:
    labels = getattr(data, f"{split}_labels")
    return np.bincount(labels, minlength=data.num_classes).tolist()


def check_disjoint(data: ClassificationData) -> None:
    """No source row and no text in two splits; row ids only compare within one source."""
    if data.provenance["split_made_here"]:
        rows = [set(data.train_rows.tolist()), set(data.val_rows.tolist()), set(data.test_rows.tolist())]
        assert not rows[0] & rows[1] and not rows[0] & rows[2] and not rows[1] & rows[2]
    assert not set(data.train_texts) & set(data.test_texts)
    assert not set(data.val_texts) & set(data.test_texts)


# ---------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------


@needs_data
def test_ag_news_real_counts_and_default_split() -> None:
    data = load_ag_news(DATA_DIR)
    assert data.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    prov = data.provenance
    assert prov["available_per_class"]["all"] == {n: 1900 for n in data.label_names}
    assert prov["split_made_here"] is True
    assert prov["options"]["test_fraction"] == 0.2
    # Stratified: exactly round(0.2 * 1900) = 380 test rows per class.
    assert per_class(data, "test") == [380] * 4
    assert per_class(data, "train") == [1520] * 4
    assert data.train_labels.dtype == np.int32 and data.test_labels.dtype == np.int32
    assert len(data.val_texts) == 0 and data.val_labels.shape == (0,)
    check_disjoint(data)
    json.dumps(prov)  # goes into results.json as is
    # The first file row, with the title joined to the body and spacing normalised.
    first = data.provenance["sources"]["all"]
    assert first.endswith("test.csv.gz")
    all_texts = set(data.train_texts) | set(data.test_texts)
    assert (
        "Fears for T N pension after talks . Unions representing workers at Turner Newall say "
        "they are 'disappointed' after talks with stricken parent firm Federal Mogul."
    ) in all_texts
    assert not any("\\" in t or "#39;" in t for t in all_texts)


def test_clean_ag_news_text() -> None:
    assert clean_ag_news_text("gave\\no indication") == "gave no indication"
    assert clean_ag_news_text("a second\\team") == "a second team"
    assert clean_ag_news_text("for \\$415 million") == "for $415 million"
    assert clean_ag_news_text('sophos."\\\\"The 18') == 'sophos." "The 18'
    assert clean_ag_news_text("Cisse #39;s injury") == "Cisse's injury"
    assert clean_ag_news_text("AT amp;T and Johnson  amp; Johnson") == "AT&T and Johnson & Johnson"
    assert clean_ag_news_text("to  quot;buy quot; from") == 'to "buy" from'
    assert clean_ag_news_text("Dell Inc. &lt;DELL.O&gt;, the") == "Dell Inc. , the"
    assert clean_ag_news_text("probably &gt; 3 years") == "probably > 3 years"


@needs_data
def test_ag_news_raw_text_when_not_cleaned() -> None:
    data = load_ag_news(DATA_DIR, clean=False, train_per_class=5, test_per_class=5)
    assert data.provenance["cleaning"] is None
    full = load_ag_news(DATA_DIR, clean=False)
    assert any("#39;" in t for t in full.train_texts + full.test_texts)


@needs_data
def test_ag_news_per_class_sampling_and_nesting() -> None:
    small = load_ag_news(DATA_DIR, train_per_class=500, test_per_class=200, seed=3)
    assert per_class(small, "train") == [500] * 4
    assert per_class(small, "test") == [200] * 4
    assert small.provenance["counts"]["test"] == {n: 200 for n in small.label_names}
    check_disjoint(small)
    # Same seed, more train rows: the test split is unchanged and train only grows.
    big = load_ag_news(DATA_DIR, train_per_class=1000, test_per_class=200, seed=3)
    assert set(big.test_rows.tolist()) == set(small.test_rows.tolist())
    assert set(small.train_rows.tolist()) <= set(big.train_rows.tolist())
    assert small.provenance["fingerprints"]["test"] == big.provenance["fingerprints"]["test"]


@needs_data
def test_split_is_deterministic_by_seed() -> None:
    a = load_ag_news(DATA_DIR, train_per_class=50, test_per_class=50, seed=7)
    b = load_ag_news(DATA_DIR, train_per_class=50, test_per_class=50, seed=7)
    c = load_ag_news(DATA_DIR, train_per_class=50, test_per_class=50, seed=8)
    assert a.train_texts == b.train_texts and a.test_texts == b.test_texts
    assert np.array_equal(a.train_labels, b.train_labels)
    assert a.provenance["fingerprints"] == b.provenance["fingerprints"]
    assert set(a.train_texts) != set(c.train_texts)
    assert a.provenance["fingerprints"]["train"] != c.provenance["fingerprints"]["train"]


@needs_data
def test_ag_news_paper_sizes_do_not_fit_the_test_only_copy() -> None:
    with pytest.raises(TLMError) as err:
        load_ag_news(DATA_DIR, **TASKS["ag_news"].paper_options)
    message = str(err.value)
    assert "'World' has 1900 rows" in message and "1000 train + 1000 test" in message


@needs_data
def test_dbpedia_real_counts() -> None:
    data = load_dbpedia(DATA_DIR)
    assert data.num_classes == 14 and data.label_names[0] == "Company"
    assert data.provenance["split_made_here"] is False
    assert data.provenance["options"]["test_fraction"] is None
    assert per_class(data, "train") == [100] * 14
    assert per_class(data, "test") == [547, 523, 565, 566, 541, 548, 521, 542, 563, 539, 575, 511, 554, 590]
    check_disjoint(data)
    sampled = load_dbpedia(DATA_DIR, train_per_class=100, test_per_class=100, val_fraction=0.1)
    assert per_class(sampled, "train") == [90] * 14
    assert per_class(sampled, "val") == [10] * 14
    assert per_class(sampled, "test") == [100] * 14
    check_disjoint(sampled)
    # Validation rows come from train.csv, not test.csv.
    assert set(sampled.val_texts) <= set(data.train_texts)


@needs_data
def test_dbpedia_too_many_per_class() -> None:
    with pytest.raises(TLMError, match="'Company' has 100 rows .*train.csv but 101 train"):
        load_dbpedia(DATA_DIR, train_per_class=101)


@needs_data
def test_fewrel_real_counts_and_markers() -> None:
    data = load_fewrel(DATA_DIR, **TASKS["fewrel"].paper_options)
    assert data.num_classes == 16
    assert data.provenance["available_per_class"]["all"] == {n: 700 for n in data.label_names}
    assert per_class(data, "train") == [630] * 16
    assert per_class(data, "test") == [70] * 16
    check_disjoint(data)
    pids = data.provenance["label_ids"]
    assert pids[:3] == ["P25", "P26", "P40"]  # numeric PID order
    assert data.label_names[pids.index("P177")] == "crosses"
    # The first P177 instance (from SOURCE.md): the tail comes before the head.
    with gzip.open(DATA_DIR / "fewrel" / "val_wiki.json.gz") as f:
        raw = json.load(f)
    inst = raw["P177"][0]
    text = mark_entities(inst["tokens"], inst["h"][2][0], inst["t"][2][0])
    assert "[E2] Mississippi River [/E2] bridge" in text
    assert text.endswith("deteriorating [E1] Cape Girardeau Bridge [/E1] .")
    assert text.index("[E2]") < text.index("[E1]")
    assert text in set(data.train_texts) | set(data.test_texts)
    for t in data.train_texts[:200]:
        assert t.count("[E1]") == t.count("[/E1]") == 1 and t.count("[E2]") == 1
        assert "  " not in t


@needs_data
def test_fewrel_relation_subset() -> None:
    data = load_fewrel(DATA_DIR, relations=["P177", "P25", "P26"], test_per_class=10)
    assert data.label_names == ["mother", "spouse", "crosses"]
    assert per_class(data, "test") == [10] * 3 and per_class(data, "train") == [690] * 3
    with pytest.raises(TLMError, match="P9999"):
        load_fewrel(DATA_DIR, relations=["P9999"])
    with pytest.raises(TLMError, match="at least 2"):
        load_fewrel(DATA_DIR, relations=["P177"])


def test_mark_entities_order_nesting_and_whitespace_tokens() -> None:
    tokens = ["A", "b", " ", "c", "d", "."]
    assert mark_entities(tokens, [0, 1], [3]) == "[E1] A b [/E1] [E2] c [/E2] d ."
    assert mark_entities(tokens, [4], [0]) == "[E2] A [/E2] b c [E1] d [/E1] ."
    # Nested: the tail lies inside the head span.
    assert mark_entities(tokens, [0, 1, 2, 3], [1]) == "[E1] A [E2] b [/E2] c [/E1] d ."


@needs_data
def test_load_task_registry() -> None:
    assert set(TASKS) == {"ag_news", "dbpedia", "fewrel", "synthetic"}
    data = load_task("dbpedia", str(DATA_DIR), train_per_class=10, test_per_class=10)
    assert data.name == "dbpedia" and data.provenance["sizes"] == {"train": 140, "val": 0, "test": 140}
    with pytest.raises(TLMError, match="unknown task 'imdb'.*ag_news, dbpedia, fewrel"):
        load_task("imdb", str(DATA_DIR))


def test_missing_data_dir_says_set_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TLM_DATA_DIR", raising=False)
    with pytest.raises(TLMError, match="TLM_DATA_DIR"):
        load_ag_news()
    with pytest.raises(TLMError, match="does not exist.*TLM_DATA_DIR"):
        load_task("fewrel", str(tmp_path / "nope"))
    with pytest.raises(TLMError, match=r"ag_news.*TLM_DATA_DIR"):
        load_ag_news(tmp_path)  # exists, but holds no ag_news/
    monkeypatch.setenv("TLM_DATA_DIR", str(tmp_path))
    with pytest.raises(TLMError, match="dbpedia_14"):
        load_task("dbpedia")


# ---------------------------------------------------------------------------
# Synthetic files: exact split arithmetic and errors
# ---------------------------------------------------------------------------


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def uneven_csv(tmp_path: Path) -> Path:
    rows = ["text,extra,label"]
    sizes = {"cat": 10, "dog": 7, "eel": 3}
    for name, n in sizes.items():
        rows += [f'"{name} number {i}, quoted",x{i},{name}' for i in range(n)]
    return write_csv(tmp_path / "uneven.csv", rows)


def test_stratified_split_exact_counts(tmp_path: Path) -> None:
    path = uneven_csv(tmp_path)
    data = load_generic(path, ["text"], "label", test_fraction=0.3, val_fraction=0.25)
    assert data.label_names == ["cat", "dog", "eel"]
    # test = round(0.3 * n) per class -> 3, 2, 1; val = round(0.25 * rest) -> 2, 1, 1.
    assert per_class(data, "test") == [3, 2, 1]
    assert per_class(data, "val") == [2, 1, 1]
    assert per_class(data, "train") == [5, 4, 1]
    check_disjoint(data)
    assert sorted(data.train_rows.tolist() + data.val_rows.tolist() + data.test_rows.tolist()) == list(
        range(20)
    )
    # The quoted comma stays inside the field; row ids point back to the file's rows.
    for text, label, row in zip(data.test_texts, data.test_labels, data.test_rows, strict=True):
        name = data.label_names[label]
        offset = {"cat": 0, "dog": 10, "eel": 17}[name]
        assert text == f"{name} number {row - offset}, quoted"


def test_caps_keep_class_shares(tmp_path: Path) -> None:
    path = uneven_csv(tmp_path)
    data = load_generic(path, ["text", "extra"], "label", test_fraction=0.5, max_train=5, max_test=4)
    # Before the caps train is 5, 3, 1 and test 5, 4, 2 per class. Every class keeps one
    # row and the rest of the cap is shared in proportion to the remaining rows (largest
    # remainder): train 1 + 2 * (4, 2, 0) / 6 -> (2, 2, 1); test 1 + 1 * (4, 3, 1) / 8 -> (2, 1, 1).
    assert per_class(data, "train") == [2, 2, 1]
    assert per_class(data, "test") == [2, 1, 1]
    assert data.train_texts[0].count(" . x") == 1  # text columns joined with " . "
    assert any("max_train=5" in s for s in data.provenance["sampling"])


def test_generic_headerless_tsv_jsonl_and_gzip(tmp_path: Path) -> None:
    # Headerless CSV, columns by 0-based index, integer labels in numeric order.
    rows = [f'{label},"title {i}","body ""{i}"""' for i in range(30) for label in (9, 10, 2)]
    path = write_csv(tmp_path / "nohead.csv", rows)
    data = load_generic(path, [1, 2], 0, has_header=False)
    assert data.label_names == ["2", "9", "10"]
    assert 'title 0 . body "0"' in data.train_texts + data.test_texts
    with pytest.raises(TLMError, match="column 'title' not found.*no header"):
        load_generic(path, ["title"], 0, has_header=False)

    # TSV with an unbalanced quote inside a field and a gzip suffix.
    tsv = tmp_path / "data.tsv.gz"
    lines = ["sentence\tlabel"] + [f'it"s {i}\t{i % 2}' for i in range(20)]
    with gzip.open(tsv, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    data = load_generic(tsv, ["sentence"], "label", test_per_class=3, train_per_class=7)
    assert per_class(data, "test") == [3, 3] and per_class(data, "train") == [7, 7]
    assert data.provenance["format"] == {"all": "tsv"}
    assert all(t.startswith('it"s ') for t in data.train_texts)

    # JSONL with a separate test file.
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text(
        "".join(json.dumps({"q": f"q{i}", "a": f"a{i}", "y": ["no", "yes"][i % 2]}) + "\n" for i in range(12))
        + "\n"
    )
    test.write_text("".join(json.dumps({"q": f"t{i}", "a": "", "y": "yes"}) + "\n" for i in range(4)))
    data = load_task(
        "generic", path=str(train), text_columns=["q", "a"], label_column="y", test_path=str(test)
    )
    assert data.provenance["split_made_here"] is False
    assert per_class(data, "train") == [6, 6] and per_class(data, "test") == [0, 4]
    assert sorted(data.test_texts) == ["t0", "t1", "t2", "t3"]  # empty column skipped
    assert "q0 . a0" in data.train_texts


def test_generic_errors(tmp_path: Path) -> None:
    bad = write_csv(tmp_path / "bad.csv", ["text,label", "a,x", "b,y", "c", "d,x"])
    with pytest.raises(
        TLMError,
        match=r"bad\.csv line 4 \(data row 3\): expected 2 columns, "
        r"found 1",
    ):
        load_generic(bad, ["text"], "label")
    one = write_csv(tmp_path / "one.csv", ["text,label", "a,x", "b,x"])
    with pytest.raises(TLMError, match="single value"):
        load_generic(one, ["text"], "label")
    ok = write_csv(tmp_path / "ok.csv", ["text,label"] + [f"t{i},{i % 2}" for i in range(10)])
    with pytest.raises(TLMError, match="column 'body' not found.*'text', 'label'"):
        load_generic(ok, ["body"], "label")
    with pytest.raises(TLMError, match="'0' has 5 rows .* 4 train \\+ 2 test"):
        load_generic(ok, ["text"], "label", train_per_class=4, test_per_class=2)
    with pytest.raises(TLMError, match="test_fraction"):
        load_generic(ok, ["text"], "label", test_fraction=1.0)
    with pytest.raises(TLMError, match="train_per_class"):
        load_generic(ok, ["text"], "label", train_per_class=0)
    with pytest.raises(TLMError, match="cannot tell the format"):
        load_generic(tmp_path / "data.parquet", ["text"], "label")
    with pytest.raises(TLMError, match="does not exist"):
        load_generic(tmp_path / "missing.csv", ["text"], "label")
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"t": "a", "y": 1}\n{"t": "b", "y": 2\n')
    with pytest.raises(TLMError, match=r"bad\.jsonl line 2 is not valid JSON"):
        load_generic(jl, ["t"], "y")
    jl.write_text('{"t": "a", "y": 1}\n{"text": "b", "y": 2}\n')
    with pytest.raises(TLMError, match=r"line 2 has no key\(s\) \['t'\]"):
        load_generic(jl, ["t"], "y")
    with pytest.raises(TLMError, match="task 'generic' needs"):
        load_task("generic", path=str(ok))


def test_zhang_layout_errors(tmp_path: Path) -> None:
    folder = tmp_path / "ag_news"
    folder.mkdir()
    (folder / "classes.txt").write_text("A\nB\n")
    write_csv(folder / "test.csv", ['1,"t","d"', '2,"t2","d2"', '3,"t3","d3"'])
    with pytest.raises(TLMError, match=r"test\.csv line 3: class '3' is not an integer in 1\.\.2"):
        load_ag_news(tmp_path)
    write_csv(folder / "test.csv", ['1,"t","d"', '2,"t2"'])
    with pytest.raises(TLMError, match=r"line 2 \(data row 2\): expected 3 columns, found 2"):
        load_ag_news(tmp_path)


# ---------------------------------------------------------------------------
# TFDS
# ---------------------------------------------------------------------------


class TlmTinyTopics(tfds.core.GeneratorBasedBuilder):
    """A real (tiny) TFDS dataset, written to disk as ArrayRecord by the test."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "title": tfds.features.Text(),
                    "body": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=["red", "green", "blue"]),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30, 0), "test": self._generate_examples(12, 100)}

    def _generate_examples(self, n: int, offset: int):
        for i in range(offset, offset + n):
            yield str(i), {"title": f"title {i}", "body": f"body {i % 3}", "label": i % 3}


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("tfds")
    TlmTinyTopics(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_real_dataset_on_disk(tiny_tfds_dir: Path) -> None:
    data = load_tfds_classification("tlm_tiny_topics", ["title", "body"], "label", data_dir=tiny_tfds_dir)
    assert data.label_names == ["red", "green", "blue"]
    assert data.provenance["split_made_here"] is False
    assert per_class(data, "train") == [10, 10, 10] and per_class(data, "test") == [4, 4, 4]
    assert sorted(data.test_texts)[0] == "title 100 . body 1"
    for text, label in zip(data.train_texts, data.train_labels, strict=True):
        assert int(text.split()[1]) % 3 == label
    assert data.provenance["tfds"]["version"] == "1.0.0"
    json.dumps(data.provenance)
    # A single split is divided here, like the test-only files.
    one = load_task(
        "tfds",
        str(tiny_tfds_dir),
        dataset="tlm_tiny_topics",
        text_keys=["title"],
        label_key="label",
        splits=("train",),
        test_per_class=2,
        val_fraction=0.25,
    )
    assert one.provenance["split_made_here"] is True
    assert per_class(one, "test") == [2] * 3 and per_class(one, "val") == [2] * 3
    assert per_class(one, "train") == [6] * 3
    check_disjoint(one)


def test_tfds_errors(tiny_tfds_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TLMError, match=r"no feature\(s\) \['text'\]"):
        load_tfds_classification("tlm_tiny_topics", ["text"], "label", data_dir=tiny_tfds_dir)
    with pytest.raises(TLMError, match="TFDS has no dataset"):
        load_tfds_classification("no_such_dataset_tlm", ["t"], "l", data_dir=tmp_path)
    with pytest.raises(TLMError, match="could not open tlm_tiny_topics.*tfds build"):
        load_tfds_classification("tlm_tiny_topics", ["title"], "label", data_dir=tmp_path)


def test_tfds_mock_data_ag_news_subset() -> None:
    """TFDS's own mock (random examples from the catalog's ag_news_subset features)."""
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        data = load_tfds_classification("ag_news_subset", ["title", "description"], "label", val_fraction=0.2)
    assert data.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert len(data.train_texts) + len(data.val_texts) == 24 and len(data.test_texts) == 24
    assert all(" . " in t for t in data.test_texts)
    assert set(data.test_labels.tolist()) <= {0, 1, 2, 3}
