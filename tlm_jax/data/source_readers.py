"""The per-format readers behind :mod:`tlm_jax.data.sources`: paths, decompression, parsing.

Path expansion (files, directories, globs, ``$TLM_DATA_DIR``), streaming
gzip/zstd decompression, and one reader per format (plain text, lines, JSONL,
the Pile, WikiExtractor, TFDS). Malformed input raises :class:`TLMError` naming
the file and line.
"""

from __future__ import annotations

import functools
import glob
import gzip
import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import zstandard

from tlm_jax.errors import TLMError

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Bytes per read when buffering a decompressed stream or hashing a file.
HASH_CHUNK = 1 << 20
_TFDS_BATCH = 256


def data_dir() -> Path | None:
    """The shared data directory from ``$TLM_DATA_DIR``, or ``None`` if unset."""
    value = os.environ.get("TLM_DATA_DIR")
    return Path(value).expanduser() if value else None


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def files_below(directory: Path) -> list[Path]:
    """The non-hidden files below ``directory``, sorted by their path relative to it."""
    found = []
    for root, dirs, files in os.walk(directory):
        # Hidden entries (.git, .DS_Store, editor swap files) are never corpus files.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in files if not f.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, directories and globs into a deterministic list of files.

    Entries keep their given order; each entry's matches are sorted; a file
    named twice is kept once (at its first position).

    Raises:
        TLMError: if ``paths`` is empty, or an entry matches nothing.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise TLMError("no input paths were given for a file-based source",
                       "list at least one file, directory or glob in the source's paths")
    out: list[Path] = []
    seen: set[Path] = set()
    root = data_dir()
    for entry in paths:
        text = os.path.expandvars(os.path.expanduser(os.fspath(entry)))
        candidates = [text]
        if root is not None and not os.path.isabs(text):
            candidates.append(str(root / text))
        matches: list[Path] = []
        for cand in candidates:
            if _has_glob(cand):
                hits = sorted(glob.glob(cand, recursive=True))
                for hit in map(Path, hits):
                    matches += files_below(hit) if hit.is_dir() else [hit]
            elif os.path.isdir(cand):
                matches = files_below(Path(cand))
                if not matches:
                    raise TLMError(f"directory {cand} contains no files",
                                   "put the corpus files there or point paths at them")
            elif os.path.isfile(cand):
                matches = [Path(cand)]
            if matches:
                break
        if not matches:
            where = f" (also looked under TLM_DATA_DIR={root})" if len(candidates) > 1 else ""
            what = "glob pattern matches no files" if _has_glob(text) else "file not found"
            raise TLMError(f"{what}: {text}{where}",
                           "check the path, or set TLM_DATA_DIR to the data directory")
        for path in matches:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                out.append(path)
    return out


@functools.lru_cache(maxsize=256)
def _sha256(resolved: str, size: int, mtime_ns: int, inode: int) -> str:
    # Cached on (path, size, mtime, inode) so a multi-GB shard is hashed once per process.
    digest = hashlib.sha256()
    with open(resolved, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 hex digest of a file's bytes (hashed once per process while it is unchanged)."""
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def open_binary(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a file for streaming bytes, decompressing gzip or zstd on the fly.

    Compression is detected from the magic bytes, or from a ``.gz``/``.zst``
    suffix (so a mislabeled file fails loudly instead of reading as garbage).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise TLMError(f"cannot open {path}: {e.strerror}",
                       "check that the file exists and is readable") from e
    suffix = path.suffix.lower()
    if magic.startswith(_GZIP_MAGIC) or suffix == ".gz":
        # GzipFile's own readline is slow; a large buffer in front roughly halves line cost.
        return io.BufferedReader(gzip.open(path, "rb"), buffer_size=HASH_CHUNK)  # type: ignore[arg-type]
    if magic == _ZSTD_MAGIC or suffix in (".zst", ".zstd"):
        raw = open(path, "rb")  # noqa: SIM115 - closed by the stream reader (closefd)
        # The Pile's shards were written with long-distance matching: allow a 2 GiB window.
        reader = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(
            raw, read_across_frames=True, closefd=True)
        return io.BufferedReader(reader, buffer_size=HASH_CHUNK)  # type: ignore[arg-type]
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


def open_text(path: str | os.PathLike[str]) -> TextIO:
    """Open a UTF-8 text file for streaming, decompressing gzip or zstd on the fly."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", newline=None)


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line_without_newline)``; read errors become TLMError."""
    lineno = 0
    try:
        with open_binary(path) as fh:
            for lineno, raw in enumerate(fh, start=1):
                # Decoding per line (not per 8 KiB block) lets errors name the exact line.
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise TLMError(f"{path}: line {lineno} is not valid UTF-8 ({e.reason} at "
                                   f"byte {e.start})", "re-encode the file as UTF-8") from e
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                yield lineno, line.rstrip("\n").rstrip("\r")
    except (gzip.BadGzipFile, EOFError) as e:
        raise TLMError(f"{path}: corrupt or truncated compressed file after line {lineno} ({e})",
                       "re-download or re-compress the file") from e
    except OSError as e:
        raise TLMError(f"{path}: read failed after line {lineno} ({e})",
                       "check the file; if compressed, re-download or re-compress it") from e
    except Exception as e:
        if type(e).__name__ == "ZstdError":
            raise TLMError(f"{path}: corrupt zstd stream after line {lineno} ({e})",
                           "re-download or re-compress the file") from e
        raise


def read_text(path: Path) -> Iterator[str]:
    """Documents separated by one or more blank lines (their non-blank lines joined)."""
    block: list[str] = []
    for _, line in _numbered_lines(path):
        if line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def read_lines(path: Path) -> Iterator[str]:
    """One document per non-empty line, stripped."""
    for _, line in _numbered_lines(path):
        line = line.strip()
        if line:
            yield line


def json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` per JSON-object line of ``path``; bad lines raise TLMError."""
    for lineno, line in _numbered_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise TLMError(f"{path}: line {lineno} is not valid JSON ({e.msg} at column {e.colno})",
                           "fix or delete that line; each line must be one JSON object") from e
        if not isinstance(record, dict):
            raise TLMError(f"{path}: line {lineno} is a JSON {type(record).__name__}, "
                           "not an object",
                           "write one JSON object per line, e.g. {\"text\": \"...\"}")
        yield lineno, record


def text_of(path: Path, lineno: int, record: dict[str, Any], field: str) -> str:
    """``record[field]`` as text; a missing or non-string field raises TLMError naming the line."""
    if field not in record:
        keys = ", ".join(sorted(record)) or "none"
        raise TLMError(f"{path}: line {lineno} has no field {field!r} (fields: {keys})",
                       "set the source's text_field to the field holding the text")
    value = record[field]
    if not isinstance(value, str):
        raise TLMError(f"{path}: line {lineno} field {field!r} is {type(value).__name__}, "
                       "not a string", "store the document text as a JSON string")
    return value


def read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    """The ``text_field`` string of each JSON line."""
    for lineno, record in json_records(path):
        yield text_of(path, lineno, record, text_field)


def _pile_set_name(record: dict[str, Any]) -> str | None:
    meta = record.get("meta")
    if isinstance(meta, str):  # some Pile re-exports store meta as a JSON string
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            return None
    return meta.get("pile_set_name") if isinstance(meta, dict) else None


def read_pile(paths: list[Path], text_field: str,
               domains: Sequence[str] | None) -> Iterator[str]:
    """The texts of Pile JSONL files, kept if ``meta.pile_set_name`` is in ``domains``."""
    return (text for text, _ in read_pile_records(paths, text_field, domains))


def read_pile_records(paths: list[Path], text_field: str, domains: Sequence[str] | None
                       ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Like :func:`read_pile`, each text with its whole JSON record."""
    wanted = None if domains is None else set(domains)
    seen: Counter[str] = Counter()
    kept = 0
    for path in paths:
        for lineno, record in json_records(path):
            name = _pile_set_name(record)
            seen[str(name)] += 1
            if wanted is not None and name not in wanted:
                continue
            kept += 1
            yield text_of(path, lineno, record, text_field), record
    if wanted is not None and kept == 0 and seen:
        # A silent empty stream would only surface later as a confusing "empty subset".
        names = ", ".join(f"{n!r} ({c})" for n, c in seen.most_common(30))
        raise TLMError(f"no Pile document has meta.pile_set_name in {sorted(wanted)}; "
                       f"names present: {names}",
                       "use the exact pile_set_name values, e.g. 'Wikipedia (en)'")


def read_wikiextractor(path: Path) -> Iterator[str]:
    """The body of each WikiExtractor ``<doc>`` record (title line dropped, empty bodies skipped)."""
    in_doc = False
    title_seen = False
    body: list[str] = []
    start = 0
    for lineno, line in _numbered_lines(path):
        if line.startswith("<doc ") or line == "<doc>":
            if in_doc:
                raise TLMError(f"{path}: line {lineno} opens a <doc> before the one opened on "
                               f"line {start} was closed",
                               "the file is not valid WikiExtractor output; re-extract it")
            in_doc, title_seen, body, start = True, False, [], lineno
        elif line.strip() == "</doc>":
            if not in_doc:
                raise TLMError(f"{path}: line {lineno} closes a </doc> that was never opened",
                               "the file is not valid WikiExtractor output; re-extract it")
            in_doc = False
            if body:
                yield "\n".join(body)
        elif in_doc:
            if not title_seen:
                # The first line inside <doc> repeats the title; it is not article text.
                title_seen = True
            elif line.strip():
                body.append(line)
        elif line.strip():
            raise TLMError(f"{path}: line {lineno} has text outside any <doc> ... </doc>",
                           "use kind 'text' for plain text, or re-extract with WikiExtractor")
    if in_doc:
        raise TLMError(f"{path}: the <doc> opened on line {start} is never closed "
                       "(truncated file?)", "re-download or re-extract the file")


def import_tfds() -> Any:
    """``tensorflow_datasets``, imported on first use (one-line error if it cannot be)."""
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415 - slow to import; only the tfds source needs it
    except ImportError as e:
        raise TLMError(f"tensorflow-datasets cannot be imported ({e})",
                       "pip install tensorflow-datasets importlib_resources array_record") from e
    return tfds


def tfds_source(tfds_name: str | None, tfds_split: str, tfds_data_dir: str | None) -> Any:
    """``tfds.data_source(...)``, with clear errors for a missing name, package or dataset."""
    if not tfds_name:
        raise TLMError("source kind 'tfds' needs tfds_name", "set tfds_name, e.g. 'imdb_reviews'")
    tfds = import_tfds()
    try:
        return tfds.data_source(tfds_name, split=tfds_split, data_dir=tfds_data_dir)
    except ImportError as e:
        raise TLMError(f"TFDS data_source for {tfds_name!r} needs a missing package ({e})",
                       "pip install importlib_resources array_record") from e
    except Exception as e:
        # TFDS raises many unrelated types (DatasetNotFoundError, ValueError for bad splits,
        # AssertionError for unprepared data); all of them are the user's input here.
        raise TLMError(f"cannot open TFDS dataset {tfds_name!r} split {tfds_split!r} "
                       f"(data_dir={tfds_data_dir}): {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}",
                       "check tfds_name/tfds_split, and prepare the dataset (tfds build) "
                       "in tfds_data_dir") from e


def _as_str(value: Any, field: str, name: str, index: int) -> str:
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TLMError(f"TFDS {name!r} example {index}: field {field!r} is not UTF-8",
                           "pick a text feature as text_field") from e
    if isinstance(value, str):
        return value
    raise TLMError(f"TFDS {name!r} example {index}: field {field!r} is "
                   f"{type(value).__name__}, not text", "pick a text feature as text_field")


def read_tfds(source: Any, name: str, text_field: str) -> Iterator[str]:
    """The ``text_field`` text of each example of a TFDS data source, read in batches."""
    n = len(source)
    batched = hasattr(source, "__getitems__")
    for lo in range(0, n, _TFDS_BATCH):
        keys = list(range(lo, min(n, lo + _TFDS_BATCH)))
        examples = None
        if batched:
            # Batched reads let array_record fetch many records per call. Some sources
            # (e.g. under tfds.testing.mock_data) expose a broken __getitems__: fall back.
            try:
                examples = source.__getitems__(keys)
            except TypeError:
                if lo:
                    raise
                batched = False
        if examples is None:
            examples = [source[i] for i in keys]
        for i, example in zip(keys, examples, strict=True):
            if text_field not in example:
                raise TLMError(f"TFDS {name!r} has no feature {text_field!r} "
                               f"(features: {', '.join(sorted(example))})",
                               "set text_field to the feature holding the text")
            yield _as_str(example[text_field], text_field, name, i)
