"""Pretraining objectives: pure batch transforms + losses behind one registry."""

# Importing a module registers its objectives.
from tlm_jax.objectives import (  # noqa: F401
    clm,  # clm
    conditional,  # conditional
    lem,  # lem
    mlm,  # mlm
    rts,  # rts, crts, slm
    salt,  # salt
    thinking,  # thinking
)
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
