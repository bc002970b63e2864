"""Hugging Face ``datasets`` as a document source (``data.source=hf``) and a task's raw splits.

``hf_path`` is a folder written by ``save_to_disk`` (read with ``load_from_disk``,
memory-mapped), a folder of data files or a Hub name (both read with
``load_dataset``, streamed when asked). Rows come in the dataset's own order, so the
stream is deterministic and :mod:`tlm_jax.data.subset` can address documents by index.

The ``datasets`` library is the optional ``hf`` extra and takes seconds to import,
so it is imported here, on first use, and nowhere else in the package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlm_jax.data.source_readers import data_dir, file_sha256, files_below
from tlm_jax.errors import TLMError

_BATCH = 1000
_SHOW = 8  # names listed in an error before "..."
# What save_to_disk leaves in a folder: a DatasetDict's index, or one Dataset's state.
_SAVED_MARKERS = ("dataset_dict.json", "state.json")
_PATH_SETTING = "data.hf_path (or --task hf:PATH)"


def _import_datasets() -> Any:
    try:
        import datasets  # noqa: PLC0415 - optional hf extra
    except ImportError as e:
        raise TLMError(f"the Hugging Face datasets library cannot be imported ({e})",
                       'pip install -e ".[hf]"') from e
    return datasets


def few(names: Any) -> str:
    """Up to a few names, comma-separated, with the total when cut (for error messages)."""
    names = [str(n) for n in names]
    if not names:
        return "none"
    shown = ", ".join(names[:_SHOW])
    return shown if len(names) <= _SHOW else f"{shown}, ... ({len(names)} in all)"


@dataclass(frozen=True)
class HFLocation:
    """Where a dataset lives: a local folder (``saved``: written by save_to_disk) or a Hub name."""

    target: str  # the folder (absolute) or the Hub name
    local: bool
    saved: bool

    def describe(self) -> str:
        """How errors name the dataset."""
        return f"folder {self.target}" if self.local else f"Hub dataset {self.target!r}"


def _looks_like_path(text: str) -> bool:
    # Hub names are "name" or "owner/name": anything rooted, relative-marked, deeper, or whose
    # first part is a local folder ("data/mine" with ./data present) is a path.
    head = text.split("/", 1)[0]
    return (os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1
            or "\\" in text or ("/" in text and os.path.isdir(head)))


def _missing_folder(text: str) -> TLMError:
    parent = Path(text).parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    entries = sorted(p.name for p in parent.iterdir() if not p.name.startswith(".")) \
        if parent.is_dir() else []
    return TLMError(f"Hugging Face dataset folder {text} does not exist ({parent} holds: {few(entries)})",
                    f"point {_PATH_SETTING} at a folder written by save_to_disk, or name a Hub dataset")


def locate(hf_path: str) -> HFLocation:
    """Resolve ``hf_path``: an existing folder (also looked up under ``$TLM_DATA_DIR``) or a Hub name.

    Raises:
        TLMError: empty, a file, or a path-like name that does not exist (listing what
            the nearest existing parent folder holds).
    """
    if not hf_path:
        raise TLMError("the Hugging Face source needs hf_path",
                       f"point {_PATH_SETTING} at a folder written by save_to_disk, or name a Hub dataset")
    text = os.path.expandvars(os.path.expanduser(hf_path))
    candidates = [text]
    root = data_dir()
    if root is not None and not os.path.isabs(text):
        candidates.append(str(root / text))
    for cand in candidates:
        path = Path(cand)
        if path.is_dir():
            saved = any((path / m).is_file() for m in _SAVED_MARKERS)
            return HFLocation(str(path.resolve()), local=True, saved=saved)
        if path.is_file():
            raise TLMError(f"{cand} is a file, not a Hugging Face dataset folder",
                           f"point {_PATH_SETTING} at the folder (save_to_disk output or data "
                           "files), or read the file with source kind text/lines/jsonl")
    if _looks_like_path(text):
        raise _missing_folder(text)
    return HFLocation(text, local=False, saved=False)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _split_names(datasets: Any, loc: HFLocation, name: str | None) -> list[str]:
    try:
        return list(datasets.get_dataset_split_names(loc.target, name))
    except Exception:  # only used to improve a message; the original error is reported anyway
        return []


def open_dataset(loc: HFLocation, name: str | None = None, split: str | None = None,
                 streaming: bool = False, setting: str = "data.hf_split") -> Any:
    """The dataset at ``loc``: one split (``split``) or, with ``split=None``, all of them.

    With ``split=None`` the result is a dict-like ``DatasetDict`` of split name ->
    dataset, or a lone ``Dataset`` where ``save_to_disk`` wrote one (it has no splits).
    A lone saved ``Dataset`` is returned for any ``split``. ``streaming`` applies to
    ``load_dataset`` only; a saved folder is memory-mapped, never loaded whole.
    ``setting`` is the config key an error tells the user to change for a bad split.

    Raises:
        TLMError: one line naming the dataset, the missing split (and those that exist)
            or config, or why the Hub could not be read.
    """
    datasets = _import_datasets()
    if loc.saved:
        if name:
            raise TLMError(f"config {name!r} does not apply to the save_to_disk {loc.describe()}",
                           "leave data.hf_name (or hf:PATH's :CONFIG) empty: a saved folder holds one")
        try:
            obj = datasets.load_from_disk(loc.target)
        except Exception as e:  # corrupt or foreign files: datasets raises many types
            raise TLMError(f"cannot read the save_to_disk {loc.describe()}: {_first_line(e)}",
                           "re-save the dataset with save_to_disk") from e
        if split is None or not isinstance(obj, dict):
            return obj
        if split not in obj:
            raise TLMError(f"{loc.describe()} has no split {split!r} (splits: {few(obj)})",
                           f"set {setting} to one of those")
        return obj[split]
    where = f"{loc.describe()}" + (f" config {name!r}" if name else "")
    try:
        obj = datasets.load_dataset(loc.target, name or None, split=split, streaming=streaming)
    except ValueError as e:
        # datasets words a missing split differently per path ("Unknown split", "Bad split").
        splits = _split_names(datasets, loc, name) if split is not None and "split" in str(e) else []
        if splits and split not in splits:
            raise TLMError(f"{where} has no split {split!r} (splits: {few(splits)})",
                           f"set {setting} to one of those") from e
        raise TLMError(f"cannot load {where}: {_first_line(e)}",
                       "check data.hf_path and data.hf_name (hf:PATH:CONFIG for a task): a dataset "
                       "with several configs needs one") from e
    except FileNotFoundError as e:
        entries = sorted(p.name for p in Path(loc.target).iterdir()) if loc.local else []
        held = f" (it holds: {few(entries)})" if loc.local else ""
        raise TLMError(f"cannot load {where}: {_first_line(e)}{held}",
                       f"point {_PATH_SETTING} at a save_to_disk folder, a folder of csv/json/parquet/text "
                       "files, or a Hub dataset name") from e
    except ConnectionError as e:
        raise TLMError(f"cannot reach the Hugging Face Hub for {where}: {_first_line(e)}",
                       "run where the Hub is reachable once (it is cached), or save_to_disk the "
                       f"dataset and point {_PATH_SETTING} at that folder") from e
    except TLMError:
        raise
    except Exception as e:  # datasets/fsspec/pyarrow raise many types for bad input
        raise TLMError(f"cannot load {where}: {_first_line(e)}",
                       "check the dataset path, its config and the split") from e
    return obj


def column_names(ds: Any) -> list[str] | None:
    """The dataset's columns, or ``None`` where a stream does not know them before reading."""
    names = getattr(ds, "column_names", None)
    return list(names) if names is not None else None


def require_columns(ds: Any, columns: list[str], where: str, setting: str) -> None:
    """Refuse columns the dataset does not have, listing the ones it does."""
    names = column_names(ds)
    if names is None:
        return
    missing = [c for c in columns if c not in names]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise TLMError(f"{where} has no column{plural} {', '.join(map(repr, missing))} "
                       f"(columns: {few(names)})", f"set {setting} to one of the columns")


def text_value(value: Any, column: str, where: str, row: int) -> str:
    """A cell as text: a string as is, a missing value (``None``) as ``""``."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise TLMError(f"{where} row {row}: column {column!r} holds {type(value).__name__}, not text",
                   "pick a string column")


def iter_rows(ds: Any, columns: list[str] | None) -> Iterator[dict[str, Any]]:
    """The rows of ``ds`` in order (only ``columns`` when given), read in Arrow batches."""
    if columns is not None:
        ds = ds.select_columns(columns)
    for batch in ds.iter(batch_size=_BATCH):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys), strict=True):
            yield dict(zip(keys, values, strict=True))


@dataclass(frozen=True)
class HFSource:
    """``data.source=hf``: one split of a dataset and the column holding the text."""

    hf_path: str
    hf_name: str | None = None
    hf_split: str = "train"
    streaming: bool = False
    text_field: str = "text"

    def open(self) -> tuple[HFLocation, Any]:
        """The location and the split's dataset, its text column checked."""
        loc = locate(self.hf_path)
        ds = open_dataset(loc, self.hf_name, self.hf_split, self.streaming)
        require_columns(ds, [self.text_field], self._where(loc), "data.text_field")
        return loc, ds

    def _where(self, loc: HFLocation) -> str:
        return f"{loc.describe()} split {self.hf_split!r}"

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(text, other columns)`` per row; opened now, so a bad source fails at the call."""
        loc, ds = self.open()
        return self._records(loc, ds, with_metadata=True)

    def documents(self) -> Iterator[str]:
        """The text of each row (only the text column is read); opened now, like :meth:`records`."""
        loc, ds = self.open()
        return (text for text, _ in self._records(loc, ds, with_metadata=False))

    def _records(self, loc: HFLocation, ds: Any, with_metadata: bool
                 ) -> Iterator[tuple[str, dict[str, Any]]]:
        where, field = self._where(loc), self.text_field
        for i, row in enumerate(iter_rows(ds, None if with_metadata else [field])):
            if field not in row:  # a stream whose columns were unknown up front
                raise TLMError(f"{where} has no column {field!r} (columns: {few(row)})",
                               "set data.text_field to one of the columns")
            text = text_value(row.pop(field), field, where, i)
            yield text, row

    def fingerprint_parts(self) -> list[Any]:
        """What the documents depend on, for the source's cache key.

        A local folder: each data file's path below the folder, size and SHA-256
        (for a save_to_disk folder, the chosen split's Arrow files; state files carry
        a random fingerprint and are left out), so moving the folder keeps the key.
        A Hub dataset: its name, config, version, split sizes, download checksums and
        the ``_fingerprint`` ``datasets`` gives the prepared split.
        """
        loc, ds = self.open()
        parts: list[Any] = ["hf", self.hf_name, self.hf_split]
        if loc.local:
            root = Path(loc.target)
            files = ([Path(f["filename"]) for f in (getattr(ds, "cache_files", None) or [])]
                     if loc.saved else files_below(root))
            for path in files:
                rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
                parts.append([rel, path.stat().st_size, file_sha256(path)])
            return parts
        info = getattr(ds, "info", None)
        splits = getattr(info, "splits", None) or {}
        split_info = splits.get(self.hf_split) if hasattr(splits, "get") else None
        parts += [loc.target, str(getattr(info, "version", None)), getattr(info, "config_name", None),
                  getattr(split_info, "num_examples", None), getattr(split_info, "num_bytes", None),
                  getattr(info, "download_checksums", None), getattr(ds, "_fingerprint", None)]
        return parts
