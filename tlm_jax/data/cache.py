"""The pre-tokenized cache: documents as one flat memory-mapped token array.

Layout of a cache directory (written to ``<dir>.tmp-*`` then renamed, so a crash
mid-build never leaves a half cache that looks complete; one process builds it while others
wait on ``<dir>.lock``)::

    meta.json          # key, dtype, counts, source/plan/tokenizer keys: the same bytes for the same data
    build.json         # how long the build took
    train.bin          # all training tokens, concatenated (uint16 or uint32)
    train.idx.npy      # int64 offsets, len = docs + 1
    val.bin, val.idx.npy

Reading is ``np.memmap``: nothing is loaded until an example touches it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
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

from tlm_jax.data import locks
from tlm_jax.data.tokenizer import encode, token_dtype
from tlm_jax.errors import TLMError

CACHE_VERSION = 1

# errno values that mean "this storage will not take the write": full, over a size limit or quota,
# read-only, not writable, or a directory path that is a file. Not a bug in tlm_jax, not bad data.
_WRITE_ERRNOS = {errno.EFBIG, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.ENOTDIR, errno.EEXIST}
# Libraries below Python report the errno in their own words: TensorStore (Orbax checkpoints)
# "[os_error_code='27']", Rust (the tokenizers library) "(os error 27)".
_ERRNO_IN_TEXT = re.compile(r"os_error_code='?(\d+)|\(os error (\d+)\)")


def write_failure(e: BaseException) -> tuple[str, str] | None:
    """``(cause, fix)`` when ``e`` says the storage refused a write (disk full, file-size limit,
    read-only directory, ...), else None (a bug or another error: let it through).

    Shared by every writer of artefacts: the data caches, checkpoints, Hugging Face exports.
    """
    code = e.errno if isinstance(e, OSError) else None
    if code is None:
        m = _ERRNO_IN_TEXT.search(str(e))
        code = int(m.group(1) or m.group(2)) if m else None
    if code not in _WRITE_ERRNOS:
        return None
    cause = os.strerror(code)
    if isinstance(e, OSError) and e.filename:
        cause += f" ({e.filename})"
    if code == errno.EFBIG:
        fix = "raise the file-size limit (ulimit -f) or write to another disk"
    elif code in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space on that disk (or raise the quota), or write to another disk"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        fix = "a file stands where a directory must be: move it, or choose another directory"
    else:
        fix = "make that directory writable, or choose another one"
    return cause, fix


@contextlib.contextmanager
def writing(what: str, where: Path) -> Iterator[None]:
    """Turn a refused write inside the block into one line: ``cannot write <what> in <where>``.

    The block's writers publish atomically, so after such an error nothing partial is left to be
    used later: running again rebuilds the entry.
    """
    try:
        yield
    except TLMError:
        raise
    except Exception as e:
        failed = write_failure(e)
        name = getattr(e, "filename", None)
        if failed is None or (name and not os.path.abspath(name).startswith(os.path.abspath(where))):
            raise  # not a refused write, or one outside ``where`` (reading a source, say)
        raise TLMError(f"cannot write {what} in {where}: {failed[0]}",
                       f"{failed[1]}, then run again (nothing partial was kept)") from e


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


def _load(final: Path, names: Iterable[str], log: Callable[[str], None]
          ) -> tuple[dict[str, TokenArrays], dict] | None:
    """The published entry ``final`` (``None`` if absent or unreadable)."""
    meta_path = final / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arrays = {name: load_split(final, name, meta["dtype"]) for name in names}
        build = final / "build.json"  # older entries kept build_seconds in meta.json
        if build.is_file():
            meta.update(json.loads(build.read_text()))
        return arrays, meta
    except (OSError, ValueError, KeyError) as e:
        log(f"warning: token cache {final} is unreadable ({e}); rebuilding it")
        return None


def _build(final: Path, tok: Tokenizer,
           splits: dict[str, tuple[Callable[[], Iterator[str]], int, int]],
           info: dict[str, Any], progress: bool) -> None:
    """Tokenize ``splits`` into a private directory beside ``final``, then rename it to ``final``."""
    shutil.rmtree(final, ignore_errors=True)  # an unreadable entry (checked under the lock)
    # Private directories of builders that were killed: under the lock nobody else is writing one.
    for stale in final.parent.glob(f"{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
    t0 = time.perf_counter()
    try:
        counts = {}
        for name, (factory, total, max_tokens) in splits.items():
            counts[name] = _write_split(tmp, name, factory(), tok, total, max_tokens, progress)
        if counts.get("train", {}).get("docs", 1) == 0:
            raise TLMError("the training subset has no tokens", "check data.paths and subset settings")
        # meta.json holds only what the content depends on, so equal caches are equal bytes;
        # the timing goes beside it.
        meta = {"version": CACHE_VERSION, "key": final.name,
                "dtype": token_dtype(tok.get_vocab_size()).name, "counts": counts, **info}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        (tmp / "build.json").write_text(json.dumps(
            {"build_seconds": round(time.perf_counter() - t0, 2)}))
        try:
            os.rename(tmp, final)
        except OSError:  # published meanwhile by a process that could not take the lock
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_or_load(cache_root: Path, key: str, tok: Tokenizer,
                  splits: dict[str, tuple[Callable[[], Iterator[str]], int, int]],
                  info: dict[str, Any], progress: bool = True,
                  log: Callable[[str], None] = print) -> tuple[dict[str, TokenArrays], dict]:
    """Return the cached splits for ``key``, building them first if needed.

    ``splits`` maps a split name to ``(doc_factory, doc_count, max_tokens)``. Concurrent
    callers with one key build it once (:mod:`tlm_jax.data.locks`): the others wait for the
    lock and load what the builder published. ``meta["reused"]`` says whether this call
    found the entry rather than built it. A write the storage refuses raises one line
    (:func:`writing`) and publishes nothing.
    """
    final = cache_root / key
    built = False
    got = _load(final, splits, log)
    if got is None:
        with writing("the token cache", cache_root), \
                locks.entry_lock(final, f"token cache {key}", log):
            got = _load(final, splits, lambda _: None)
            if got is not None:
                log(f"token cache {key}: reusing the entry another process built")
            else:
                _build(final, tok, splits, info, progress)
                got, built = _load(final, splits, log), True
                if got is None:
                    raise TLMError(f"token cache {final} cannot be read back after building it",
                                   "check the disk under the cache directory (TLM_CACHE_DIR)")
    arrays, meta = got
    if meta.get("counts", {}).get("train", {}).get("docs", 1) == 0:
        raise TLMError("the training subset has no tokens", "check data.paths and subset settings")
    meta["reused"] = not built
    return arrays, meta
