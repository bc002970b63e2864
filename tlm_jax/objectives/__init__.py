"""Pretraining objectives: pure batch transforms + losses behind one registry.

The registry's entries are the imports in :mod:`tlm_jax.objectives.build`.
"""

from tlm_jax.objectives.base import (
    OBJECTIVES,
    LossTerms,
    Objective,
    SpecialTokens,
    parse_names,
    register,
)
from tlm_jax.objectives.build import DocumentHooks, build_objectives, document_hooks
from tlm_jax.objectives.runs import RunAccess, TextSampler, TrainedRun

__all__ = ["OBJECTIVES", "DocumentHooks", "LossTerms", "Objective", "RunAccess", "SpecialTokens",
           "TextSampler", "TrainedRun", "build_objectives", "document_hooks", "parse_names", "register"]
