"""Typed run configuration: dataclasses, model presets and ``key=value`` overrides.

A run is described by one :class:`Config`. It is built in this order, later
sources winning: dataclass defaults -> the model preset named by
``model.preset`` -> a YAML file (``--config``) -> command-line overrides
(``model.layers=2 train.steps=300``). OmegaConf does the typed merging, so an
unknown key or a value of the wrong type is refused with a one-line error.

The package: :mod:`.schema` (the dataclasses), :mod:`.presets` (model presets),
:mod:`.loading` (YAML, overrides, JSON round trip), :mod:`.validate` (ranges, choices and
combinations refused before any work), :mod:`.messages` (short error-message helpers).
"""

from __future__ import annotations

from tlm_jax.config.loading import (
    MERGE_ERRORS,
    check_sections,
    data_dir,
    expand_path,
    from_dict,
    load_config,
    load_yaml,
    merge_error,
    parse_overrides,
    read_config,
    save_config,
    to_dict,
    unknown_preset,
)
from tlm_jax.config.messages import (
    show,
    suggest,
)
from tlm_jax.config.presets import (
    MODEL_PRESETS,
    register_model_preset,
)
from tlm_jax.config.schema import (
    REPO_CONFIG_DIR,
    Config,
    ContinualConfig,
    DataConfig,
    DistributedConfig,
    InterventionsConfig,
    MeshConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    SelectionConfig,
    TrainConfig,
)
from tlm_jax.config.validate import (
    CHOICES,
    LINEAR_KINDS,
    MODEL_CHOICES,
    MODEL_RANGES,
    OPTIM_RANGES,
    check_ranges,
    validate,
    validate_continual,
    validate_linear,
    validate_model,
    validate_ranges,
)

__all__ = [
    "CHOICES",
    "Config",
    "ContinualConfig",
    "DataConfig",
    "DistributedConfig",
    "InterventionsConfig",
    "LINEAR_KINDS",
    "MERGE_ERRORS",
    "MODEL_CHOICES",
    "MODEL_PRESETS",
    "MODEL_RANGES",
    "MeshConfig",
    "ModelConfig",
    "OPTIM_RANGES",
    "ObjectiveConfig",
    "OptimConfig",
    "REPO_CONFIG_DIR",
    "SelectionConfig",
    "TrainConfig",
    "check_ranges",
    "check_sections",
    "data_dir",
    "expand_path",
    "from_dict",
    "load_config",
    "load_yaml",
    "merge_error",
    "parse_overrides",
    "read_config",
    "register_model_preset",
    "save_config",
    "show",
    "suggest",
    "to_dict",
    "unknown_preset",
    "validate",
    "validate_continual",
    "validate_linear",
    "validate_model",
    "validate_ranges",
]
