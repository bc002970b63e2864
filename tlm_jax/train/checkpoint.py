"""Orbax checkpoints of the whole run: train state, data-iterator state and metadata.

Orbax writes each step into a temporary directory and renames it when complete,
so a crash mid-save leaves the previous checkpoints intact and the partial one
is never listed. A finalized checkpoint that fails to restore (truncated or
corrupted files) is skipped with a warning and the next older one is tried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from tlm_jax.errors import TLMError

ITEMS = ("state", "data", "meta")


class Checkpointer:
    """Save every ``every`` steps (and on demand), keep the newest ``keep``."""

    def __init__(self, directory: str | Path, *, every: int, keep: int, async_save: bool = True,
                 log: Callable[[str], None] = print) -> None:
        self.directory = Path(directory).resolve()
        self.log = log
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
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state),
                                  meta=ocp.args.JsonSave(meta))
        return bool(self.manager.save(step, args=args, force=force))

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
                self.log(f"warning: checkpoint at step {step} in {self.directory} cannot be "
                         f"restored ({msg}); trying an older one")
                logging.debug("restore failure", exc_info=True)
        return None

    def wait(self) -> None:
        """Block until async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release resources."""
        self.manager.wait_until_finished()
        self.manager.close()
