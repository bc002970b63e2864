"""Config: presets, YAML files, key=value overrides and their errors."""

from __future__ import annotations

import pytest

from tlm_jax.config import MODEL_PRESETS, load_config, read_config, save_config
from tlm_jax.errors import TLMError


def test_preset_fills_shape_and_overrides_win() -> None:
    cfg = load_config(None, ["model.preset=bert-6", "model.dropout=0.0", "train.steps=7"])
    assert (cfg.model.layers, cfg.model.hidden, cfg.model.heads) == (6, 768, 12)
    assert cfg.model.intermediate == 3072 and cfg.model.max_len == 128
    assert cfg.model.dropout == 0.0 and cfg.train.steps == 7


def test_override_beats_preset_field() -> None:
    cfg = load_config(None, ["model.preset=bert-1", "model.heads=8", "model.hidden=512"])
    assert (cfg.model.layers, cfg.model.heads, cfg.model.hidden) == (1, 8, 512)


def test_yaml_file_then_cli(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  preset: mini\n  layers: 3\ntrain:\n  steps: 11\n")
    cfg = load_config(str(f), ["train.steps=12"])
    assert cfg.model.hidden == MODEL_PRESETS["mini"]["hidden"]
    assert cfg.model.layers == 3 and cfg.train.steps == 12


def test_list_override_syntax() -> None:
    cfg = load_config(None, ["objective.names=[mlm:0.5,mlm:0.5]"])
    assert cfg.objective.names == ["mlm:0.5", "mlm:0.5"]


@pytest.mark.parametrize("overrides, needle", [
    (["model.hiden=3"], "unknown config key 'model.hiden'"),
    (["train.steps=abc"], "train.steps"),
    (["model.preset=nope"], "unknown model preset"),
    (["train.steps"], "not key=value"),
    (["model.hidden=100", "model.heads=3"], "not divisible"),
    (["data.subset=random"], "num_docs"),
    (["model.mlm_last_layer=some"], "mlm_last_layer"),
])
def test_bad_overrides_are_one_line_errors(overrides, needle) -> None:
    with pytest.raises(TLMError) as e:
        load_config(None, overrides)
    msg = e.value.one_line()
    assert needle in msg and "\n" not in msg and "fix:" in msg


def test_missing_config_file() -> None:
    with pytest.raises(TLMError, match="not found"):
        load_config("does-not-exist.yaml")


def test_config_json_round_trip(tmp_path) -> None:
    cfg = load_config(None, ["model.preset=bert-1-cpu", "data.num_docs=5", "data.subset=first"])
    save_config(cfg, tmp_path / "config.json")
    assert read_config(tmp_path / "config.json") == cfg
