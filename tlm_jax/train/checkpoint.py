"""Orbax checkpoints of the whole run: train state, data-iterator state and metadata.

Orbax writes each step into a temporary directory and renames it when complete,
so a crash mid-save leaves the previous checkpoints intact and the partial one
is never listed. A finalized checkpoint that fails to restore (truncated or
corrupted files) is skipped with a warning and the next older one is tried; the loop then
moves it out of the rotation (:func:`set_aside`) and refuses to start again from step 0 when
none restores, unless told to (``train.restart=true``).

A save the storage refuses (disk full, file-size limit, read-only directory) stops the run with
one line naming the step, the cause and the newest intact checkpoint (:meth:`Checkpointer.save`);
with async saves the failure surfaces at the next save, :meth:`~Checkpointer.wait` or
:meth:`~Checkpointer.close`. The refused step stays a temporary directory, never listed, never
restored, and removed when the directory is next opened.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from tlm_jax.data.cache import write_failure
from tlm_jax.errors import TLMError

ITEMS = ("state", "data", "meta")


class _RefusedWriteRecords(logging.Filter):
    """Drops library log records (with tracebacks) about a refused write: Orbax logs one per
    array, asyncio one per future nobody awaited; :class:`Checkpointer` reports it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return write_failure(exc or Exception(record.getMessage())) is None


def _quiet_refused_writes() -> None:
    """Keep a refused save to its one line (idempotent).

    Besides the log records above, TensorStore writes still in flight when Orbax's save fails
    finish on their own threads and call back into the event loop Orbax has closed; Python
    reports each as an unraisable ``RuntimeError: Event loop is closed``. Their results are
    discarded anyway, so those are dropped too; every other unraisable goes to the old hook.
    """
    if getattr(sys.unraisablehook, "_tlm_quiet", False):
        return
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_RefusedWriteRecords())
    previous = sys.unraisablehook

    def hook(u: Any) -> None:
        if isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed":
            return
        previous(u)

    hook._tlm_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class Checkpointer:
    """Save every ``every`` steps (and on demand), keep the newest ``keep``."""

    def __init__(self, directory: str | Path, *, every: int, keep: int, async_save: bool = True,
                 log: Callable[[str], None] = print) -> None:
        _quiet_refused_writes()
        self.directory = Path(directory).resolve()
        if self.directory.exists() and not self.directory.is_dir():
            raise TLMError(f"cannot open checkpoint directory {self.directory}: it is a file",
                           "move that file away or use a new --workdir")
        self.log = log
        self.every, self.keep, self.async_save = every, keep, async_save
        # Steps whose checkpoint failed to restore, with the reason (see :func:`set_aside`).
        self.failed: dict[int, str] = {}
        # The async save still in flight (its errors surface later), and whether a save was refused.
        self._pending: int | None = None
        self.write_failed = False
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(every, 1), max_to_keep=keep, create=True,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        except Exception as e:  # orbax raises assorted types for unreadable directories
            raise TLMError(f"cannot open checkpoint directory {self.directory}: {e}",
                           "check its permissions or use a new --workdir") from e

    def steps(self) -> list[int]:
        """Steps of complete checkpoints, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict[str, Any], meta: dict[str, Any],
             *, force: bool = False) -> bool:
        """Save if ``step`` is on the interval (or ``force``); returns whether it saved."""
        self.wait()  # a refused async save of an earlier step stops the run here, named
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state),
                                  meta=ocp.args.JsonSave(meta))
        try:
            saved = bool(self.manager.save(step, args=args, force=force))
        except Exception as e:
            self._refused(step, e)
            raise
        if saved and self.async_save:
            self._pending = step
        return saved

    def _refused(self, step: int, e: BaseException) -> None:
        """Raise the one-line error for a save of ``step`` the storage refused (else return)."""
        failed = write_failure(e)
        if failed is None:
            return
        self.write_failed = True
        # Finalized steps only: the refused one is still ``<step>.orbax-checkpoint-tmp``.
        names = [p.name for p in self.directory.iterdir()] if self.directory.is_dir() else []
        intact = [int(n) for n in names if n.isdigit() and int(n) < step]
        then = (f"running the same command again resumes from the checkpoint at step {max(intact)}, "
                "which is intact" if intact else "no earlier checkpoint was written")
        raise TLMError(f"cannot write checkpoint at step {step} in {self.directory}: {failed[0]}",
                       f"{failed[1]}; {then}") from e

    def restore(self, abstract: Any, shardings: Any, only: int | None = None
                ) -> tuple[int, Any, dict, dict] | None:
        """Newest restorable checkpoint as ``(step, state, data_state, meta)``, else None.

        ``only``: that step's checkpoint alone (None when it is missing or unrestorable).
        """
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract, shardings)
        steps = reversed(self.steps()) if only is None else [s for s in self.steps() if s == only]
        for step in steps:
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore()))
                return step, out["state"], dict(out["data"] or {}), dict(out["meta"] or {})
            except Exception as e:  # corrupt files surface as many exception types
                msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                self.failed[step] = msg
                self.log(f"warning: checkpoint at step {step} in {self.directory} cannot be "
                         f"restored ({msg}); trying an older one")
                logging.debug("restore failure", exc_info=True)
        return None

    def wait(self) -> None:
        """Block until async saves are on disk; one that was refused raises its one-line error."""
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            if step is not None:
                self._refused(step, e)
            raise

    def close(self, *, quiet: bool = False) -> None:
        """Finish pending saves and release resources.

        A refused async save raises its one-line error, unless a refused save was already
        raised or ``quiet`` (another error is on its way: then it is logged as a warning), so the
        first error is the one the user sees.
        """
        try:
            if not self.write_failed:
                self.wait()
        except TLMError as e:
            if not quiet:
                raise
            self.log(f"warning: {e.one_line()}")
        finally:
            try:
                self.manager.close()
            except Exception:
                if not (self.write_failed or quiet):
                    raise
                logging.debug("checkpoint manager close after an error", exc_info=True)

    def drop_after(self, step: int) -> list[int]:
        """Delete the checkpoints newer than ``step`` (a resumed run replays them); returns their steps."""
        newer = [s for s in self.steps() if s > step]
        for s in newer:
            self.manager.delete(s)
        return newer


def set_aside(directory: Path, aside: Path, steps: list[int]) -> list[Path]:
    """Move the checkpoints of ``steps`` from ``directory`` into ``aside`` (renamed, not copied).

    Keeps them out of keep-K rotation and out of later restores, but on disk for the user. A
    name already taken in ``aside`` gets a numeric suffix.
    """
    aside.mkdir(parents=True, exist_ok=True)
    moved = []
    for step in steps:
        src = directory / str(step)
        if not src.exists():
            continue
        dst, n = aside / str(step), 1
        while dst.exists():
            dst, n = aside / f"{step}.{n}", n + 1
        shutil.move(str(src), str(dst))
        moved.append(dst)
    return moved
