"""What an objective may ask of a trained run, as an interface the train layer implements.

Some objectives build on a model that was trained before: C-RTS clusters a run's token
embeddings, SALT distils from a teacher run, thinking augmentation samples trajectories from a
causal LM. Objectives stay pure batch transforms over data and never load checkpoints or run
models themselves: :func:`tlm_jax.objectives.build_objectives` hands them a :class:`RunAccess`,
which the run builder (:func:`tlm_jax.train.pretrained.run_access`) makes from the checkpoint loader
and the sampler. Without one, an objective that needs a run stops with a one-line error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tokenizers import Tokenizer

from tlm_jax.data.tokenizer import SpecialTokens
from tlm_jax.errors import TLMError


class TrainedRun(Protocol):
    """A finished pretraining run: config, tokenizer, model and (unboxed) parameters."""

    cfg: Any
    tokenizer: Tokenizer
    special: SpecialTokens
    model: Any
    params: Any
    step: int
    path: Path


class TextSampler(Protocol):
    """Samples continuations of token prompts from one run's causal LM."""

    max_len: int

    def sample(self, prompts: Sequence[Sequence[int]], *, max_new: int, temperature: float,
               top_p: float, seed: int) -> list[list[int]]:
        """Generated ids (prompt excluded, up to and without the end token) for each prompt."""
        ...


@dataclass(frozen=True)
class RunAccess:
    """How objectives reach trained runs: ``load(run_dir)`` and ``sampler(run)``."""

    load: Callable[[str], TrainedRun]
    sampler: Callable[[TrainedRun], TextSampler]


def require_runs(runs: RunAccess | None, what: str) -> RunAccess:
    """``runs``, or a one-line error saying that ``what`` needs a trained run."""
    if runs is None:
        raise TLMError(f"{what} needs a trained run, but this objective was built without run access",
                       "build objectives through tlm pretrain / train.loop.build_run, or pass "
                       "runs=tlm_jax.train.pretrained.run_access() to build_objectives")
    return runs
