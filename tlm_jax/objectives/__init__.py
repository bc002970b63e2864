"""Pretraining objectives: pure batch transforms + losses behind one registry."""

from tlm_jax.objectives import mlm  # noqa: F401  (registers "mlm")
from tlm_jax.objectives.base import (
    OBJECTIVES,
    LossTerms,
    Objective,
    SpecialTokens,
    build_objectives,
    parse_names,
    register,
)

__all__ = ["OBJECTIVES", "LossTerms", "Objective", "SpecialTokens", "build_objectives",
           "parse_names", "register"]
