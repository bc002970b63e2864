"""Tests for tlm_jax.data.sources and tlm_jax.data.synthetic, on real files."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import zstandard

from tlm_jax.data.sources import KINDS, expand_paths, iter_documents, source_fingerprint
from tlm_jax.data.synthetic import synthetic_corpus, write_synthetic_corpus
from tlm_jax.errors import TLMError

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("TLM_DATA_DIR", REPO.parent / "shared" / "data"))
WIKI = DATA_DIR / "wikipedia_en_excerpt" / "enwiki_wikiextractor_AA_wiki_00-63.txt.gz"


def _write(path: Path, text: str) -> Path:
    """Write ``text`` as UTF-8, compressed by suffix (.gz / .zst)."""
    data = text.encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".zst":
        data = zstandard.ZstdCompressor(level=3).compress(data)
    path.write_bytes(data)
    return path


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# --------------------------------------------------------------------------- text / lines


@pytest.mark.parametrize("name", ["corpus.txt", "corpus.txt.gz", "corpus.txt.zst"])
def test_text_blank_line_separated(tmp_path: Path, name: str) -> None:
    text = "first doc line one\nline two\n\n\n\nsecond doc\n   \nthird\r\ndoc\n"
    path = _write(tmp_path / name, text)
    assert list(iter_documents("text", [str(path)])) == [
        "first doc line one\nline two", "second doc", "third\ndoc"]


def test_gzip_detected_by_magic_bytes_without_suffix(tmp_path: Path) -> None:
    path = tmp_path / "corpus.data"
    path.write_bytes(gzip.compress(b"alpha\n\nbeta gamma\n"))
    assert list(iter_documents("text", [str(path)])) == ["alpha", "beta gamma"]


def test_gz_suffix_on_plain_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "notgzip.txt.gz"
    path.write_bytes(b"plain text, not gzip\n")
    with pytest.raises(TLMError, match="notgzip.txt.gz"):
        list(iter_documents("text", [str(path)]))


def test_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.txt.gz", "  one  \n\ntwo words\n\n\nthree\n")
    assert list(iter_documents("lines", [str(path)])) == ["one", "two words", "three"]


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok\nfine\n\xff\xfe broken\n")
    with pytest.raises(TLMError, match=r"bad\.txt: line 3 is not valid UTF-8"):
        list(iter_documents("lines", [str(path)]))


def test_min_chars(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.txt", "a\nabcd\nabcdefgh\n")
    assert list(iter_documents("lines", [str(path)], min_chars=4)) == ["abcd", "abcdefgh"]


# --------------------------------------------------------------------------- jsonl


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.jsonl.zst"])
def test_jsonl(tmp_path: Path, name: str) -> None:
    recs = [{"text": "héllo wörld", "id": 1}, {"text": "second\n\ndoc"}, {"text": ""}]
    path = _write(tmp_path / name, _jsonl(recs) + "\n")
    # The empty document is dropped by the default min_chars=1.
    assert list(iter_documents("jsonl", [str(path)])) == ["héllo wörld", "second\n\ndoc"]


def test_jsonl_custom_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", _jsonl([{"body": "x y"}, {"body": "z"}]))
    assert list(iter_documents("jsonl", [str(path)], text_field="body")) == ["x y", "z"]


def test_jsonl_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    good = _jsonl([{"text": "a"}, {"text": "b"}])
    path = _write(tmp_path / "broken.jsonl.gz", good + '{"text": "c"\n' + _jsonl([{"text": "d"}]))
    docs = iter_documents("jsonl", [str(path)])
    assert next(docs) == "a"
    assert next(docs) == "b"
    with pytest.raises(TLMError, match=r"broken\.jsonl\.gz: line 3 is not valid JSON") as err:
        next(docs)
    assert err.value.fix  # every user error carries a fix


def test_jsonl_missing_field_and_non_object(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", _jsonl([{"text": "a"}, {"content": "b"}]))
    with pytest.raises(TLMError, match=r"line 2 has no field 'text' \(fields: content\)"):
        list(iter_documents("jsonl", [str(path)]))
    path2 = _write(tmp_path / "e.jsonl", '{"text": "a"}\n["text"]\n')
    with pytest.raises(TLMError, match="line 2 is a JSON list"):
        list(iter_documents("jsonl", [str(path2)]))


# --------------------------------------------------------------------------- wikiextractor

WIKI_SAMPLE = """<doc id="1" url="?curid=1" title="Empty Page">
Empty Page


</doc>
<doc id="2" url="?curid=2" title="Alpha">
Alpha

Alpha is the first letter.
History.
It came from aleph.

</doc>
<doc id="3" url="?curid=3" title="Beta">
Beta

Beta is the second letter.
</doc>
"""


@pytest.mark.parametrize("name", ["wiki_00", "wiki_00.gz"])
def test_wikiextractor_body_only(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, WIKI_SAMPLE)
    docs = list(iter_documents("wikiextractor", [str(path)]))
    assert docs == ["Alpha is the first letter.\nHistory.\nIt came from aleph.",
                    "Beta is the second letter."]


def test_wikiextractor_truncated_doc(tmp_path: Path) -> None:
    path = _write(tmp_path / "wiki_01", WIKI_SAMPLE + '<doc id="4" title="Cut">\nCut\n\nbody\n')
    with pytest.raises(TLMError, match=r"wiki_01: the <doc> opened on line 19 is never closed"):
        list(iter_documents("wikiextractor", [str(path)]))


@pytest.fixture(scope="module")
def wiki_path() -> Path:
    if not WIKI.exists():
        pytest.skip(f"real data not found at {WIKI} (set TLM_DATA_DIR)")
    return WIKI


def test_real_wikipedia_excerpt(wiki_path: Path) -> None:
    # A full read takes about 1 s, so it is not marked slow.
    count, first, n_words = 0, None, 0
    for doc in iter_documents("wikiextractor", [str(wiki_path)]):
        if first is None:
            first = doc
        count += 1
        n_words += len(doc.split())
        assert "<doc" not in doc and "</doc>" not in doc
    assert count == 36_183
    assert first is not None
    assert first.startswith("Jarred Shaw (born September 28, 1990) is an American professional")
    assert first.split("\n")[1] == "Professional career."
    # SOURCE.md: ~9.09 M whitespace-separated words of body text.
    assert 8.9e6 < n_words < 9.3e6


def test_real_wikipedia_via_data_dir(wiki_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TLM_DATA_DIR", str(wiki_path.parents[1]))
    monkeypatch.chdir(wiki_path.parents[2].parent)  # somewhere the relative path does not exist
    rel = f"{wiki_path.parent.name}/*.txt.gz"
    assert expand_paths([rel]) == [wiki_path]
    docs = iter_documents("wikiextractor", [rel])
    assert next(docs).startswith("Jarred Shaw (born September 28, 1990)")


# --------------------------------------------------------------------------- pile

PILE = [
    {"text": "wiki one", "meta": {"pile_set_name": "Wikipedia (en)"}},
    {"text": "code one", "meta": {"pile_set_name": "Github"}},
    {"text": "arxiv one", "meta": {"pile_set_name": "ArXiv"}},
    {"text": "wiki two", "meta": {"pile_set_name": "Wikipedia (en)"}},
    {"text": "meta as string", "meta": json.dumps({"pile_set_name": "Github"})},
]


@pytest.mark.parametrize("name", ["00.jsonl.zst", "00.jsonl.gz", "00.jsonl"])
def test_pile_domain_filter(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, _jsonl(PILE))
    assert list(iter_documents("pile", [str(path)])) == [r["text"] for r in PILE]
    assert list(iter_documents("pile", [str(path)], domains=["Wikipedia (en)"])) == [
        "wiki one", "wiki two"]
    assert list(iter_documents("pile", [str(path)], domains=["Github", "ArXiv"])) == [
        "code one", "arxiv one", "meta as string"]


def test_pile_streams_multiple_zst_frames(tmp_path: Path) -> None:
    # Concatenated zstd frames are a valid .zst file (e.g. shards appended with cat).
    cctx = zstandard.ZstdCompressor()
    path = tmp_path / "multi.jsonl.zst"
    path.write_bytes(cctx.compress(_jsonl(PILE[:2]).encode()) + cctx.compress(
        _jsonl(PILE[2:]).encode()))
    assert len(list(iter_documents("pile", [str(path)]))) == len(PILE)


def test_pile_unknown_domain_lists_names(tmp_path: Path) -> None:
    path = _write(tmp_path / "00.jsonl.zst", _jsonl(PILE))
    with pytest.raises(TLMError, match=r"names present: 'Wikipedia \(en\)' \(2\)"):
        list(iter_documents("pile", [str(path)], domains=["Wikipedia"]))


def test_domains_rejected_for_other_kinds(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", _jsonl([{"text": "a"}]))
    with pytest.raises(TLMError, match="only applies to kind 'pile'"):
        iter_documents("jsonl", [str(path)], domains=["Github"])


# --------------------------------------------------------------------------- paths


def test_directories_and_globs_sorted(tmp_path: Path) -> None:
    d = tmp_path / "corpus"
    (d / "b").mkdir(parents=True)
    (d / "a").mkdir()
    _write(d / "b" / "x.txt", "b-x\n")
    _write(d / "a" / "y.txt.gz", "a-y\n")
    _write(d / "a" / "x.txt", "a-x\n")
    _write(d / "z.txt", "z\n")
    _write(d / ".hidden", "hidden\n")
    assert list(iter_documents("lines", [str(d)])) == ["a-x", "a-y", "b-x", "z"]
    assert list(iter_documents("lines", [str(d / "*" / "x.txt")])) == ["a-x", "b-x"]
    assert list(iter_documents("lines", [str(d / "**" / "*.txt*")])) == [
        "a-x", "a-y", "b-x", "z"]
    # Entry order is kept; a file listed twice is read once.
    assert list(iter_documents("lines", [str(d / "z.txt"), str(d / "a")])) == [
        "z", "a-x", "a-y"]
    assert list(iter_documents("lines", [str(d / "a"), str(d / "a" / "x.txt")])) == [
        "a-x", "a-y"]


def test_missing_path_and_unknown_kind_fail_at_call(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(TLMError, match=r"file not found: .*nope\.jsonl"):
        iter_documents("jsonl", [str(missing)])  # raised before iterating
    with pytest.raises(TLMError, match="glob pattern matches no files"):
        iter_documents("jsonl", [str(tmp_path / "*.zst")])
    with pytest.raises(TLMError, match="no input paths"):
        iter_documents("text", [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TLMError, match="contains no files"):
        iter_documents("text", [str(tmp_path / "empty")])
    with pytest.raises(TLMError, match="unknown source kind 'csv'") as err:
        iter_documents("csv", [])
    assert all(k in err.value.fix for k in KINDS)


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_tracks_content(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", _jsonl([{"text": "abc"}]))
    fp = source_fingerprint("jsonl", [str(path)])
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert source_fingerprint("jsonl", [str(path)]) == fp
    # Same size, different bytes: the sha256 must notice.
    _write(path, _jsonl([{"text": "abd"}]))
    os.utime(path, ns=(1, 1))
    fp2 = source_fingerprint("jsonl", [str(path)])
    assert fp2 != fp
    # A copy with the same name elsewhere has the same content, hence the same key.
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(path, other / "d.jsonl")
    assert source_fingerprint("jsonl", [str(other / "d.jsonl")]) == fp2
    # Reading options that change the stream change the key.
    assert source_fingerprint("jsonl", [str(path)], text_field="body") != fp2
    assert source_fingerprint("jsonl", [str(path)], min_chars=5) != fp2
    assert source_fingerprint("lines", [str(path)]) != fp2


def test_fingerprint_pile_domains_and_synthetic(tmp_path: Path) -> None:
    path = _write(tmp_path / "00.jsonl.zst", _jsonl(PILE))
    a = source_fingerprint("pile", [str(path)], domains=["Github", "ArXiv"])
    assert a == source_fingerprint("pile", [str(path)], domains=["ArXiv", "Github"])
    assert a != source_fingerprint("pile", [str(path)])
    s = source_fingerprint("synthetic", [], synthetic_docs=100, synthetic_seed=1)
    assert s == source_fingerprint("synthetic", [], synthetic_docs=100, synthetic_seed=1)
    assert s != source_fingerprint("synthetic", [], synthetic_docs=100, synthetic_seed=2)
    assert s != source_fingerprint("synthetic", [], synthetic_docs=101, synthetic_seed=1)


# --------------------------------------------------------------------------- tfds


def test_tfds_with_mock_data() -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=7):
        docs = list(iter_documents("tfds", [], tfds_name="imdb_reviews", tfds_split="train"))
        fp = source_fingerprint("tfds", [], tfds_name="imdb_reviews")
        with pytest.raises(TLMError, match="has no feature 'body'"):
            list(iter_documents("tfds", [], tfds_name="imdb_reviews", text_field="body"))
    assert len(docs) == 7
    assert all(isinstance(d, str) and d.strip() for d in docs)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)


def test_tfds_real_dataset_on_disk(tmp_path: Path) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")

    class TlmTinyText(tfds.core.GeneratorBasedBuilder):
        """A real, prepared TFDS dataset (array_record) written to tmp_path."""

        VERSION = tfds.core.Version("1.0.1")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "id": np.int64}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(300), "test": self._generate_examples(3)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"text": f"document {i} says h\u00e9llo", "id": i}

    TlmTinyText(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    docs = list(iter_documents("tfds", [], tfds_name="tlm_tiny_text", tfds_split="train",
                               tfds_data_dir=str(tmp_path)))
    # Random-access order is TFDS's shuffled on-disk order; the set is what is fixed.
    assert len(docs) == 300
    assert sorted(docs) == sorted(f"document {i} says h\u00e9llo" for i in range(300))
    # Reading is deterministic, so subset indices stay meaningful.
    assert docs == list(iter_documents("tfds", [], tfds_name="tlm_tiny_text",
                                       tfds_data_dir=str(tmp_path)))
    test_docs = list(iter_documents("tfds", [], tfds_name="tlm_tiny_text", tfds_split="test",
                                    tfds_data_dir=str(tmp_path)))
    assert len(test_docs) == 3
    fp_train = source_fingerprint("tfds", [], tfds_name="tlm_tiny_text",
                                  tfds_data_dir=str(tmp_path))
    fp_test = source_fingerprint("tfds", [], tfds_name="tlm_tiny_text", tfds_split="test",
                                 tfds_data_dir=str(tmp_path))
    assert fp_train != fp_test
    with pytest.raises(TLMError, match="cannot open TFDS dataset 'tlm_tiny_text' split 'valid"):
        iter_documents("tfds", [], tfds_name="tlm_tiny_text", tfds_split="validation",
                       tfds_data_dir=str(tmp_path))
    with pytest.raises(TLMError, match="needs tfds_name"):
        iter_documents("tfds", [])


# --------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_prefix_and_sizes() -> None:
    docs = list(synthetic_corpus(300, seed=3))
    assert docs == list(synthetic_corpus(300, seed=3))
    assert docs[:50] == list(synthetic_corpus(50, seed=3))
    assert docs != list(synthetic_corpus(300, seed=4))
    assert len(set(docs)) == 300
    words = np.array([len(d.split()) for d in docs])
    assert words.min() >= 50 and words.max() <= 200
    assert list(iter_documents("synthetic", [], synthetic_docs=50, synthetic_seed=3)) == docs[:50]


def test_synthetic_is_structured_not_word_salad() -> None:
    docs = list(synthetic_corpus(2000, seed=0))
    text = " ".join(docs)
    # A small vocabulary that a tiny model can learn.
    assert len(set(text.split())) < 5000
    # World facts are consistent across documents: one venue and one city per club.
    venues: dict[str, set[str]] = defaultdict(set)
    for m in re.finditer(r"([A-Z][\w ]+?) is a professional \w+(?: \w+)? club based in "
                         r"[^.]+\. The club was founded in \d+ and plays its home games at "
                         r"([^,]+),", text):
        venues[m.group(1)].add(m.group(2))
    assert len(venues) > 30 and all(len(v) == 1 for v in venues.values())
    # Season articles agree with each other and with the clubs' records.
    winners: dict[tuple[str, str], set[str]] = defaultdict(set)
    for m in re.finditer(r"The (\d{4}) ([\w ]+?) season was the \w+ season of the [\w ]+?\. "
                         r"[^.]+\. ([\w ]+?) won the title", text):
        winners[(m.group(1), m.group(2))].add(m.group(3))
    assert len(winners) > 100 and all(len(v) == 1 for v in winners.values())
    last_titles = re.findall(r"\. ([\w ]+?) competes in the ([\w ]+?)\. The club has won the "
                             r"league [\w ]+?, most recently in (\d{4})\.", text)
    checked_last = 0
    for team, league, year in last_titles:
        if (year, league) in winners:
            assert winners[(year, league)] == {team}
            checked_last += 1
    assert checked_last > 10
    # Ages at death agree with the dates in the same document.
    months = ["January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December"]
    checked = 0
    date = r"(\w+) (\d+), (\d{4})"
    for doc in docs:
        m = re.search(rf"\({date} – {date}\)", doc)
        a = re.search(r"died in [^.]+ on [^.]+, at the age of (\d+)\.", doc)
        if m and a:
            bm, bd, by, dm, dd, dy = m.groups()
            age = int(dy) - int(by) - ((months.index(dm), int(dd)) < (months.index(bm), int(bd)))
            assert int(a.group(1)) == age, doc
            checked += 1
    assert checked > 100
    # Agreement: pronouns follow the person; "a"/"an" follows the next word.
    assert not re.search(r"\ba [AEIOU]\w*\b", text)
    assert not re.search(r"\ban [^AEIOUaeiou\W]\w*", text)
    assert "one children" not in text and "two child " not in text
    assert "zero" not in text
    # Nobody is born after, or dies before, the events of their own article.
    for doc in docs:
        m = re.match(r"[^(]+\((?:born )?\w+ \d+, (\d{4})", doc)
        if m:
            born = int(m.group(1))
            years = [int(y) for y in re.findall(r"\b(1[89]\d\d|20[0-2]\d)\b", doc)]
            assert min(years) >= born, doc
    # ... and nothing happens after the corpus's present (2020).
    assert max(int(y) for y in re.findall(r"\b(20\d\d)\b", text)) <= 2020


def test_write_synthetic_corpus_roundtrip(tmp_path: Path) -> None:
    path = write_synthetic_corpus(tmp_path / "syn" / "corpus.jsonl.gz", num_docs=40, seed=5)
    assert list(iter_documents("jsonl", [str(path)])) == list(synthetic_corpus(40, seed=5))
    again = write_synthetic_corpus(tmp_path / "again.jsonl.gz", num_docs=40, seed=5)
    assert path.read_bytes() == again.read_bytes()  # no timestamp in the gzip header
    with pytest.raises(TLMError, match="negative"):
        synthetic_corpus(-1)
