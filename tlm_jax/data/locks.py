"""Cache entries that concurrent processes build once: a lock beside each entry, atomic publishing.

Every cached stage (subset plan, filter scores, tokenizer, token arrays) follows one protocol:

1. if the entry exists, use it (entries are immutable once published, so reading needs no lock);
2. otherwise take the exclusive lock ``<entry>.lock`` beside it (``fcntl.flock``: released by the
   kernel when the holder exits or dies, so a crashed builder never leaves a stale lock), and look
   again: a process that waited finds the winner's entry and reuses it;
3. the one holder builds into a private temporary beside the entry and publishes it with one
   ``os.replace``/``os.rename``, so no reader ever sees half an entry.

N runs started together on one cold cache therefore build each entry once and all train on the
published artefacts. Lock files stay (deleting one would let a newcomer lock a fresh inode while a
waiter holds the old one). Where ``flock`` is unavailable (no ``fcntl``, or a file system that
refuses it) the build goes on unlocked: concurrent runs may then duplicate work, but the atomic
publish still keeps every entry whole.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; publishing stays atomic
    fcntl = None  # type: ignore[assignment]

Log = Callable[[str], None]


def lock_path(entry: Path) -> Path:
    """The lock file of a cache entry: ``<entry>.lock`` beside it."""
    return entry.with_name(entry.name + ".lock")


@contextlib.contextmanager
def entry_lock(entry: Path, what: str, log: Log = print) -> Iterator[None]:
    """Hold the exclusive lock of cache ``entry`` (blocking; ``what`` names it in the log)."""
    path = lock_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:  # "a": create without truncating a file others may hold
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"{what}: another process is building it; waiting")
                fcntl.flock(f, fcntl.LOCK_EX)
            except OSError as e:  # e.g. a network file system without flock
                log(f"warning: cannot lock {path} ({e}); building {what} without a lock")
        yield  # closing the file releases the lock


@contextlib.contextmanager
def entry_locks(entries: Sequence[Path], what: str, log: Log = print) -> Iterator[None]:
    """Hold the locks of several entries, taken in sorted order (so two holders never deadlock)."""
    with contextlib.ExitStack() as stack:
        for entry in sorted(set(entries)):
            stack.enter_context(entry_lock(entry, f"{what} {entry.name}", log))
        yield


def build_once(entry: Path, build: Callable[[], None], what: str, log: Log = print) -> bool:
    """Make sure cache ``entry`` exists, calling ``build`` (which publishes it) if nobody has.

    Returns whether this call built it; ``False`` when it existed or another process
    published it while this one waited for the lock.
    """
    if entry.exists():
        return False
    with entry_lock(entry, what, log):
        if entry.exists():
            log(f"{what}: reusing the entry another process built")
            return False
        build()
        return True


def publish_file(entry: Path, write: Callable[[Path], None]) -> None:
    """Publish a one-file entry: ``write`` fills a private temporary, renamed to ``entry`` in one step.

    The temporary keeps ``entry``'s suffix (``np.save``/``np.savez`` append theirs otherwise).
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{entry.stem}.tmp-", suffix=entry.suffix, dir=entry.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, entry)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
