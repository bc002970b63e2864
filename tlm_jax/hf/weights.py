"""Reading Hugging Face checkpoint files: safetensors, PyTorch ``.bin`` state dicts, ``config.json``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from tlm_jax.errors import TLMError

_ST_DTYPES: dict[str, Any] = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                              "U8": np.uint8, "BOOL": np.bool_}
_MAX_HEADER = 100 * 2**20


def _st_dtype(name: str, path: Path, tensor: str) -> Any:
    if name == "BF16":
        return ml_dtypes.bfloat16
    if name not in _ST_DTYPES:
        raise TLMError(f"{path}: tensor '{tensor}' has unsupported dtype {name}",
                       "re-save the checkpoint in float32/float16/bfloat16")
    return _ST_DTYPES[name]


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file (memory-mapped), with clear errors.

    Raises:
        TLMError: a truncated file (names the first tensor past the end), a
            malformed header, a size that disagrees with the shape, an unknown dtype.
    """
    p = Path(path)
    fix = "re-download or re-save the checkpoint (the file is damaged)"
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TLMError(f"{p} is truncated ({size} bytes: not even the header length)", fix)
        n = int.from_bytes(head, "little")
        if n > min(size - 8, _MAX_HEADER):
            raise TLMError(f"{p} is truncated or not a safetensors file (header of {n:,} bytes, "
                           f"file of {size:,})", fix)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TLMError(f"{p} has a corrupt safetensors header ({e})", fix) from e
    if not isinstance(header, dict):
        raise TLMError(f"{p} has a corrupt safetensors header (not a mapping)", fix)
    start = 8 + n
    buf = np.memmap(p, dtype=np.uint8, mode="r") if size > start else np.zeros(0, np.uint8)
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (a, b) = info["dtype"], list(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise TLMError(f"{p}: corrupt header entry for tensor '{name}'", fix) from e
        dtype = np.dtype(_st_dtype(dtype_name, p, name))
        if start + b > size:
            raise TLMError(f"{p} is truncated: tensor '{name}' ends at byte {start + b:,} but the "
                           f"file has {size:,} bytes", fix)
        if b - a != math.prod(shape) * dtype.itemsize or a < 0:
            raise TLMError(f"{p}: tensor '{name}' has {b - a} bytes for shape {shape} "
                           f"{dtype_name}", fix)
        out[name] = buf[start + a:start + b].view(dtype).reshape(shape)
    return out


def _import_torch(p: Path) -> Any:
    """The ``torch`` module (the optional ``hf`` extra), or a clear error naming ``p``."""
    try:
        import torch  # noqa: PLC0415 - optional `hf` extra, needed only for pytorch_model.bin
    except ImportError as e:
        raise TLMError(f"{p} is a PyTorch pickle and torch is not installed",
                       "pip install 'tlm-jax[hf]', or convert it to model.safetensors") from e
    return torch


def read_torch_bin(path: str | Path) -> dict[str, np.ndarray]:
    """A ``pytorch_model.bin`` state dict via ``torch.load(weights_only=True)`` (safe unpickling)."""
    p = Path(path)
    torch = _import_torch(p)
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise TLMError(f"cannot read {p} safely: {msg}",
                       "the file is corrupt or holds non-tensor objects: re-save it as "
                       "model.safetensors") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise TLMError(f"{p} does not hold a state dict", "save model.state_dict()")
    out = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            out[k] = (v.float() if v.is_floating_point() else v).numpy()
    return out


def read_hf_weights(src: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The state dict of an HF model directory and the files it came from."""
    for index_name, reader in (("model.safetensors.index.json", read_safetensors),
                               ("pytorch_model.bin.index.json", read_torch_bin)):
        index = src / index_name
        if index.is_file():
            try:
                files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, AttributeError) as e:
                raise TLMError(f"{index} is not a valid shard index", "re-save the checkpoint") from e
            sd: dict[str, np.ndarray] = {}
            for f in files:
                if not (src / f).is_file():
                    raise TLMError(f"shard {src / f} listed in {index.name} is missing",
                                   "copy every shard of the checkpoint")
                sd.update(reader(src / f))
            return sd, files
    if (src / "model.safetensors").is_file():
        return read_safetensors(src / "model.safetensors"), ["model.safetensors"]
    if (src / "pytorch_model.bin").is_file():
        return read_torch_bin(src / "pytorch_model.bin"), ["pytorch_model.bin"]
    raise TLMError(f"no model.safetensors or pytorch_model.bin in {src}",
                   "point at a transformers checkpoint directory (TF/Flax weights are not read)")


def read_hf_config(src: Path) -> dict[str, Any]:
    """``config.json`` of an HF model directory."""
    p = src / "config.json"
    if not src.is_dir():
        raise TLMError(f"{src} is not a directory", "point at a transformers checkpoint directory")
    if not p.is_file():
        raise TLMError(f"no config.json in {src}", "point at a transformers checkpoint directory")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise TLMError(f"{p} is not valid JSON ({e.msg} at line {e.lineno})",
                       "restore the file") from e
    if not isinstance(cfg, dict):
        raise TLMError(f"{p} is not a JSON object", "restore the file")
    return cfg
