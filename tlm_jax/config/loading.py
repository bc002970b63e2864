"""From YAML files and ``key=value`` overrides to a :class:`Config`, and back to JSON."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tlm_jax.config.messages import clip_words, show, suggest
from tlm_jax.config.presets import MODEL_PRESETS
from tlm_jax.config.schema import REPO_CONFIG_DIR, Config, ModelConfig
from tlm_jax.config.validate import get_key, validate
from tlm_jax.errors import TLMError

MERGE_ERRORS = (OmegaConfBaseException, TypeError, ValueError)


def merge_error(err: Exception, where: str, schema: Any = None, what: str = "config") -> TLMError:
    """An OmegaConf merge error as one line: the unknown key and its nearest valid ones, or the
    key whose value has the wrong type."""
    key = getattr(err, "full_key", "") or ""
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "not in struct" in msg or "Key '" in msg and "not" in msg:
        section = key.rsplit(".", 1)[0] if "." in key else ""
        node: Any = schema if schema is not None else Config()
        for part in filter(None, section.split(".")):
            node = getattr(node, part, None)
        valid = [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []
        return TLMError(f"unknown {what} key {show(key, 60)} in {where}",
                        suggest(key.rsplit(".", 1)[-1], valid, "`tlm config` prints all keys"
                                if what == "config" else "the config's docs list all {n}",
                                prefix=f"{section}." if section else ""))
    try:
        default = get_key(schema if schema is not None else Config(), key)
    except AttributeError:
        default = None
    fix = ("check the value's type" if not key or default is None or dataclasses.is_dataclass(default)
           else f"use a value like the default, {show(default, 20)}")
    return TLMError(f"bad value for {key or 'a section'} in {where}: {clip_words(msg, 30)[:70]}", fix)


def check_sections(part: Any, schema: Any, where: str, prefix: str = "", *,
                   drop_null: bool = True) -> None:
    """Refuse a section given as a scalar or a list (``model: 3``, ``train=[1]``), naming it.

    ``part`` is a plain dict (a YAML file or parsed overrides), ``schema`` a dataclass instance;
    a section is a nested dataclass or a dict-typed field. With ``drop_null`` an empty (null)
    section is dropped from ``part``: in YAML, ``model:`` with every key under it commented out
    means "no changes"; ``model=null`` on the command line is refused like a scalar.
    """
    if not isinstance(part, dict):
        raise TLMError(f"{where} is {show(part)}, not a mapping of sections", "write key: value pairs")
    for name in list(part):
        default = getattr(schema, str(name), None)
        value = part[name]
        if isinstance(default, list) and isinstance(value, dict):  # data.paths[0]=x
            raise TLMError(f"config key '{prefix}{name}' in {where} is a list, not a mapping",
                           f"set it whole, e.g. {prefix}{name}=[a,b]")
        if not (dataclasses.is_dataclass(default) or isinstance(default, dict)):
            continue
        if value is None and drop_null:
            del part[name]
        elif not isinstance(value, dict):
            example = next(iter(f.name for f in dataclasses.fields(default))) if dataclasses.is_dataclass(
                default) else "key"
            raise TLMError(f"config section '{prefix}{name}' in {where} is {show(value, 30)}, not a "
                           "mapping", f"set keys under it, e.g. {prefix}{name}.{example}=...")
        elif dataclasses.is_dataclass(default):
            check_sections(value, default, where, f"{prefix}{name}.", drop_null=drop_null)


def parse_overrides(overrides: Sequence[str], example: str = "train.steps=300") -> Any:
    """``key=value`` strings as one OmegaConf node; a malformed one is named in a one-line error."""
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise TLMError(f"override {show(item, 60)} is not key=value", f"write e.g. {example}")
        try:
            OmegaConf.from_dotlist([item])
        except Exception as e:  # YAML scanner/reader errors and OmegaConf's own have many types
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TLMError(f"cannot parse override {show(item, 40)}: {clip_words(first, 30)[:60]}",
                           f"write key=value, e.g. {example}") from e
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as e:  # e.g. both model=3 and model.hidden=64
        raise TLMError(f"overrides conflict: {clip_words(str(e).splitlines()[0])[:100]}",
                       "set a section either whole or key by key, not both") from e


def load_yaml(path_or_name: str) -> dict[str, Any]:
    """Read a YAML config given as a path or as a name in ``configs/`` into a plain dict."""
    candidates = [Path(path_or_name)]
    if not path_or_name.endswith((".yaml", ".yml")):
        candidates += [REPO_CONFIG_DIR / f"{path_or_name}.yaml", Path("configs") / f"{path_or_name}.yaml"]
    for p in candidates:
        if p.is_file():
            try:
                loaded = OmegaConf.to_container(OmegaConf.load(p))
            except Exception as e:  # yaml errors have many types
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise TLMError(f"cannot parse config file {p}: {clip_words(first)[:100]}",
                               "fix the YAML syntax") from e
            if loaded is None:  # an empty file (or only comments): no settings
                return {}
            if not isinstance(loaded, dict):
                raise TLMError(f"config file {p} is a {type(loaded).__name__}, not a mapping",
                               "write key: value pairs")
            return loaded
    known = [p.stem for p in REPO_CONFIG_DIR.glob("*.yaml")] if REPO_CONFIG_DIR.is_dir() else []
    hint = suggest(path_or_name, known, "configs/ holds all {n}")
    raise TLMError(f"config {show(path_or_name, 60)} not found",
                   f"pass a YAML path or a name in configs/: {hint}")


def unknown_preset(name: Any) -> TLMError:
    """The error for a model preset name that is not in :data:`MODEL_PRESETS`."""
    return TLMError(f"unknown model preset {show(name)}",
                    suggest(name, MODEL_PRESETS, "`tlm params` lists all {n}"))


def load_config(config: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a :class:`Config` from defaults, preset, YAML file and overrides."""
    file_part: dict[str, Any] = load_yaml(config) if config else {}
    check_sections(file_part, Config(), f"config file {config}")
    cli_part = parse_overrides(overrides)
    check_sections(OmegaConf.to_container(cli_part), Config(), "command-line overrides",
                   drop_null=False)
    preset = OmegaConf.select(cli_part, "model.preset") or (file_part.get("model") or {}).get(
        "preset", ModelConfig.preset)
    if not isinstance(preset, str) or preset not in MODEL_PRESETS:
        raise unknown_preset(preset)
    base = OmegaConf.structured(Config)
    try:
        merged = OmegaConf.merge(base, {"model": MODEL_PRESETS[preset]})
    except MERGE_ERRORS as e:
        raise merge_error(e, f"preset {preset}") from e
    try:
        merged = OmegaConf.merge(merged, file_part)
    except MERGE_ERRORS as e:
        raise merge_error(e, f"config file {config}") from e
    try:
        merged = OmegaConf.merge(merged, cli_part)
    except MERGE_ERRORS as e:
        raise merge_error(e, "command-line overrides") from e
    try:  # resolves ${...} interpolations
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except MERGE_ERRORS as e:
        raise merge_error(e, "the merged config") from e
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain-dict form (for config.json)."""
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> Config:
    """Inverse of :func:`to_dict` (unknown keys refused)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), d))  # type: ignore
    except OmegaConfBaseException as e:
        raise merge_error(e, "saved config.json") from e


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write ``config.json``."""
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def read_config(path: str | os.PathLike) -> Config:
    """Read a ``config.json`` written by :func:`save_config`."""
    p = Path(path)
    if not p.is_file():
        raise TLMError(f"no config.json at {p}", "point at a tlm_jax run directory")
    try:
        return from_dict(json.loads(p.read_text()))
    except json.JSONDecodeError as e:
        raise TLMError(f"{p} is not valid JSON ({e.msg} at line {e.lineno})",
                       "restore it from the run or delete the run directory") from e


def data_dir() -> Path | None:
    """The data directory from ``TLM_DATA_DIR`` (None when unset)."""
    d = os.environ.get("TLM_DATA_DIR")
    return Path(d).expanduser().resolve() if d else None


def expand_path(p: str) -> str:
    """Expand ``$TLM_DATA_DIR``/``~`` in a configured path, with a clear error if unset."""
    if "TLM_DATA_DIR" in p and "TLM_DATA_DIR" not in os.environ:
        raise TLMError(f"path '{p}' needs TLM_DATA_DIR, which is not set",
                       "export TLM_DATA_DIR=/path/to/shared/data")
    return os.path.expanduser(os.path.expandvars(p))
