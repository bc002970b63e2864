"""The pre-tokenized cache: documents as one flat memory-mapped token array.

Layout of a cache directory (written to ``<dir>.tmp-*`` then renamed, so a crash
mid-build never leaves a half cache that looks complete)::

    meta.json          # key, dtype, counts, build time
    train.bin          # all training tokens, concatenated (uint16 or uint32)
    train.idx.npy      # int64 offsets, len = docs + 1
    val.bin, val.idx.npy

Reading is ``np.memmap``: nothing is loaded until an example touches it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from tlm_jax.data.tokenizer import encode, token_dtype
from tlm_jax.errors import TLMError

CACHE_VERSION = 1


@dataclass
class TokenArrays:
    """Tokenized documents: ``tokens[offsets[i]:offsets[i+1]]`` is document ``i``."""

    tokens: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def doc(self, i: int) -> np.ndarray:
        """Token ids of document ``i``."""
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    @property
    def num_tokens(self) -> int:
        """Total number of tokens."""
        return int(self.offsets[-1])

    @classmethod
    def from_docs(cls, docs: Iterable[np.ndarray], dtype: Any = np.uint32) -> TokenArrays:
        """In-memory arrays from a list of token arrays (tests, small data)."""
        docs = list(docs)
        offsets = np.zeros(len(docs) + 1, np.int64)
        offsets[1:] = np.cumsum([len(d) for d in docs])
        tokens = np.concatenate(docs).astype(dtype) if docs else np.zeros(0, dtype)
        return cls(tokens, offsets)


def default_cache_dir() -> Path:
    """``$TLM_CACHE_DIR`` or ``~/.cache/tlm_jax``."""
    return Path(os.environ.get("TLM_CACHE_DIR", Path.home() / ".cache" / "tlm_jax"))


def _write_split(path: Path, name: str, docs: Iterator[str], tok: Tokenizer, total: int,
                 max_tokens: int, progress: bool, chunk: int = 512) -> dict[str, int]:
    dtype = token_dtype(tok.get_vocab_size())
    offsets = [0]
    n_tok = 0
    bar = tqdm(total=total, desc=f"tokenizing {name}", unit="doc", disable=not progress,
               mininterval=1.0)
    with open(path / f"{name}.bin", "wb") as f:
        buf: list[str] = []

        def flush() -> bool:
            nonlocal n_tok
            for ids in encode(tok, buf):
                if len(ids) == 0:
                    continue
                if max_tokens and n_tok + len(ids) > max_tokens:
                    ids = ids[: max_tokens - n_tok]
                f.write(ids.astype(dtype).tobytes())
                n_tok += len(ids)
                offsets.append(n_tok)
                if max_tokens and n_tok >= max_tokens:
                    return True
            bar.update(len(buf))
            buf.clear()
            return False

        done = False
        for text in docs:
            buf.append(text)
            if len(buf) >= chunk and (done := flush()):
                break
        if not done and buf:
            flush()
    bar.close()
    np.save(path / f"{name}.idx.npy", np.asarray(offsets, np.int64))
    return {"docs": len(offsets) - 1, "tokens": n_tok}


def load_split(path: Path, name: str, dtype: str) -> TokenArrays:
    """Memory-map one split of a cache directory."""
    offsets = np.load(path / f"{name}.idx.npy")
    n = int(offsets[-1])
    tokens = (np.memmap(path / f"{name}.bin", dtype=np.dtype(dtype), mode="r", shape=(n,))
              if n else np.zeros(0, dtype))
    return TokenArrays(tokens, offsets)


def build_or_load(cache_root: Path, key: str, tok: Tokenizer,
                  splits: dict[str, tuple[Callable[[], Iterator[str]], int, int]],
                  info: dict[str, Any], progress: bool = True,
                  log: Callable[[str], None] = print) -> tuple[dict[str, TokenArrays], dict]:
    """Return the cached splits for ``key``, building them first if needed.

    ``splits`` maps a split name to ``(doc_factory, doc_count, max_tokens)``.
    """
    final = cache_root / key
    meta_path = final / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            arrays = {name: load_split(final, name, meta["dtype"]) for name in splits}
            meta["reused"] = True
            return arrays, meta
        except (OSError, ValueError, KeyError) as e:
            log(f"warning: token cache {final} is unreadable ({e}); rebuilding it")
            shutil.rmtree(final, ignore_errors=True)
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=cache_root))
    t0 = time.perf_counter()
    try:
        counts = {}
        for name, (factory, total, max_tokens) in splits.items():
            counts[name] = _write_split(tmp, name, factory(), tok, total, max_tokens, progress)
        meta = {"version": CACHE_VERSION, "key": key,
                "dtype": token_dtype(tok.get_vocab_size()).name, "counts": counts,
                "build_seconds": round(time.perf_counter() - t0, 2), **info}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same cache first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if counts.get("train", {}).get("docs", 1) == 0:
        raise TLMError("the training subset has no tokens", "check data.paths and subset settings")
    arrays = {name: load_split(final, name, meta["dtype"]) for name in splits}
    meta["reused"] = False
    return arrays, meta
