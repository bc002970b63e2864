"""Hugging Face interoperability: import an HF BERT checkpoint as a run, export a run as HF BERT.

Import (``tlm import-hf DIR --workdir OUT``)
--------------------------------------------
``DIR`` is a ``transformers`` BERT directory: ``config.json``, the weights
(``model.safetensors``, sharded ``model.safetensors.index.json``, or
``pytorch_model.bin`` read with ``torch.load(weights_only=True)``, which
refuses arbitrary pickled objects) and the vocabulary (``tokenizer.json`` or
``vocab.txt``; ``tokenizer_config.json``'s ``do_lower_case`` is honoured for a
bare ``vocab.txt``). Layouts: ``BertForMaskedLM``, ``BertForPreTraining`` (the
next-sentence head is dropped), ``BertForSequenceClassification`` and
``BertModel`` (these two have no MLM head: a fresh one is initialised as our
model initialises it). ``OUT`` becomes an ordinary run directory:

* ``config.json``: our :class:`~tlm_jax.config.Config` with the checkpoint's
  shape in ``model.*`` (``model.preset`` is only a label: every shape key is
  explicit) and ``data.tokenizer`` pointing at ``OUT/tokenizer.json``;
  ``key=value`` overrides given to ``import-hf`` are applied (not shape keys);
* ``tokenizer.json``: the vocabulary in our form (no post-processor, no
  truncation or padding: the pipeline adds [CLS]/[SEP] itself);
* ``checkpoints/0``: an Orbax checkpoint readable by
  :class:`~tlm_jax.train.checkpoint.Checkpointer`: a ``TrainState`` at step 0
  with the imported parameters, a *fresh* optimizer state for ``optim.*``, an
  empty data-iterator state and ``meta.imported_from``. So
  ``tlm pretrain --config OUT/config.json --workdir OUT [data overrides given
  at import]`` continues pretraining it, ``tlm finetune --pretrained OUT``
  fine-tunes it and ``tlm export-hf OUT`` writes it back. (The optimizer state
  is built for the ``optim.*`` given at import: resume with the same ones.)
* ``classifier.npz`` + ``classifier.json`` (``BertForSequenceClassification``
  only): the HF head for the fine-tuning module. HF classifies
  ``tanh(h_CLS @ pooler_kernel + pooler_bias) @ classifier_kernel +
  classifier_bias``; the arrays are ``pooler_kernel [hidden, hidden]``,
  ``pooler_bias [hidden]``, ``classifier_kernel [hidden, labels]``,
  ``classifier_bias [labels]`` (kernels are ``[in, out]``, i.e. HF's weights
  transposed); the JSON holds ``num_labels``, ``id2label``, ``problem_type``.

Export (``tlm export-hf RUN --out DIR``)
---------------------------------------
The newest restorable checkpoint of a run becomes a directory that
``transformers.BertForMaskedLM.from_pretrained(DIR)`` loads (``config.json``,
``model.safetensors``) with ``vocab.txt``, ``tokenizer.json`` (with BERT's
[CLS] $A [SEP] template), ``tokenizer_config.json`` and
``special_tokens_map.json``, so ``BertTokenizerFast.from_pretrained(DIR)``
tokenizes as the run does. The vocabulary rows our loop adds to round the
embedding table up (never inputs nor targets) are dropped: HF's
``vocab_size`` is the tokenizer's. Conv front-end models, decoders and
``head_dim * heads != hidden`` are not expressible as ``BertConfig`` and are
refused; per-token objective heads are not exported.

Parameter mapping (ours <-> HF, ``W`` = HF ``Linear.weight [out, in]``)
----------------------------------------------------------------------
* ``qkv.kernel [hidden, 3, heads, head_dim]`` <-> ``query/key/value.weight``:
  ``kernel[:, j] = W_j.T.reshape(hidden, heads, head_dim)``; bias likewise;
* ``attention.out.kernel [heads, head_dim, hidden]`` <-> ``attention.output.dense``:
  ``W.T.reshape(heads, head_dim, hidden)``;
* ``mlp.wi``/``mlp.wo`` <-> ``intermediate.dense``/``output.dense`` (``W.T``);
* LayerNorm ``scale``/``bias`` <-> ``weight``/``bias`` (old ``gamma``/``beta``
  accepted); ``layer_norm_eps`` is copied (both default to 1e-12);
* MLM head: ``mlm.transform`` <-> ``cls.predictions.transform.dense``,
  ``mlm.norm`` <-> ``cls.predictions.transform.LayerNorm``, ``mlm.bias`` <->
  ``cls.predictions.bias``; the decoder is tied to the word embeddings on both
  sides (an untied HF decoder is refused);
* activations: our ``gelu`` (exact erf) = HF ``"gelu"``; ``gelu_tanh`` = HF
  ``"gelu_new"``/``"gelu_pytorch_tanh"``; ``relu`` = ``"relu"``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlm_jax.config import (
    MODEL_PRESETS,
    Config,
    ModelConfig,
    _fail_override,
    load_config,
    read_config,
    save_config,
    to_dict,
    validate,
)
from tlm_jax.errors import TLMError

SUPPORTED_ARCHITECTURES = ("BertForMaskedLM", "BertForPreTraining",
                           "BertForSequenceClassification", "BertModel")
_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
           "relu": "relu"}
_OUR_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
# Model keys the checkpoint fixes (import-hf overrides may not change them).
SHAPE_KEYS = ("arch", "vocab_size", "hidden", "layers", "heads", "head_dim", "intermediate",
              "max_len", "type_vocab_size", "conv_blocks", "activation")

# ----------------------------------------------------------------------------- reading weights

_ST_DTYPES: dict[str, Any] = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                              "U8": np.uint8, "BOOL": np.bool_}
_MAX_HEADER = 100 * 2**20


def _st_dtype(name: str, path: Path, tensor: str) -> Any:
    if name == "BF16":
        import ml_dtypes  # noqa: PLC0415 - a jax dependency

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


def read_torch_bin(path: str | Path) -> dict[str, np.ndarray]:
    """A ``pytorch_model.bin`` state dict via ``torch.load(weights_only=True)`` (safe unpickling)."""
    p = Path(path)
    try:
        import torch  # noqa: PLC0415
    except ImportError as e:
        raise TLMError(f"{p} is a PyTorch pickle and torch is not installed",
                       "pip install 'tlm-jax[hf]', or convert it to model.safetensors") from e
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


# ----------------------------------------------------------------------------- config mapping


def hf_architecture(hf: dict[str, Any], state: dict[str, np.ndarray] | None = None,
                    where: str = "config.json") -> str:
    """The supported HF architecture named by ``hf`` (inferred from ``state`` if unnamed)."""
    model_type = hf.get("model_type", "")
    archs = hf.get("architectures") or []
    arch = archs[0] if archs else ""
    if model_type != "bert" or (arch and arch not in SUPPORTED_ARCHITECTURES):
        raise TLMError(f"unsupported architecture {arch or '(none)'} (model_type "
                       f"{model_type or '(none)'}) in {where}",
                       f"import a BERT checkpoint: {', '.join(SUPPORTED_ARCHITECTURES)}")
    if arch:
        return arch
    keys = state or {}
    if any(k.startswith("classifier.") for k in keys):
        return "BertForSequenceClassification"
    if any(k.startswith("cls.predictions.") for k in keys):
        return "BertForMaskedLM"
    return "BertModel"


def hf_to_model_config(hf: dict[str, Any], where: str = "config.json") -> dict[str, Any]:
    """Our ``model.*`` settings for an HF ``BertConfig`` dict."""
    def need(key: str) -> Any:
        if key not in hf:
            raise TLMError(f"{where} lacks '{key}'", "use a complete BertConfig config.json")
        return hf[key]

    act = hf.get("hidden_act", "gelu")
    if act not in _HF_ACT:
        raise TLMError(f"hidden_act={act!r} in {where} is not supported",
                       f"use one of: {', '.join(_HF_ACT)}")
    pos = hf.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise TLMError(f"position_embedding_type={pos!r} in {where} is not supported",
                       "import a BERT with absolute position embeddings")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise TLMError(f"{where} describes a BERT decoder", "import an encoder (is_decoder=false)")
    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    if hidden % heads:
        raise TLMError(f"hidden_size={hidden} is not divisible by num_attention_heads={heads} "
                       f"in {where}", "fix config.json")
    return dict(arch="bert", vocab_size=int(need("vocab_size")), hidden=hidden,
                layers=int(need("num_hidden_layers")), heads=heads, head_dim=0,
                intermediate=int(need("intermediate_size")),
                max_len=int(hf.get("max_position_embeddings", 512)),
                type_vocab_size=int(hf.get("type_vocab_size", 2)),
                dropout=float(hf.get("hidden_dropout_prob", 0.1)),
                attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
                activation=_HF_ACT[act], layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                init_std=float(hf.get("initializer_range", 0.02)), conv_blocks=0)


def model_config_to_hf(m: ModelConfig, vocab_size: int, pad_id: int,
                       architecture: str = "BertForMaskedLM") -> dict[str, Any]:
    """An HF ``BertConfig`` dict for our model config (refuses what BERT cannot express)."""
    check_exportable(m)
    return {"architectures": [architecture], "model_type": "bert", "vocab_size": vocab_size,
            "hidden_size": m.hidden, "num_hidden_layers": m.layers,
            "num_attention_heads": m.heads, "intermediate_size": m.intermediate,
            "hidden_act": _OUR_ACT[m.activation], "hidden_dropout_prob": m.dropout,
            "attention_probs_dropout_prob": m.attention_dropout,
            "max_position_embeddings": m.max_len, "type_vocab_size": m.type_vocab_size,
            "initializer_range": m.init_std, "layer_norm_eps": m.layer_norm_eps,
            "pad_token_id": pad_id, "position_embedding_type": "absolute",
            "tie_word_embeddings": True, "is_decoder": False, "dtype": "float32"}


def check_exportable(m: ModelConfig) -> None:
    """Refuse model configs that HF ``BertConfig`` cannot express."""
    if m.arch != "bert":
        raise TLMError(f"model.arch={m.arch!r} cannot be exported as HF BERT",
                       "export a BERT (encoder) run")
    if m.conv_blocks > 0:
        raise TLMError(f"this run has a convolutional front-end (model.conv_blocks="
                       f"{m.conv_blocks}), which HF BertConfig cannot express",
                       "export a run without conv blocks (bert-6, bert-1, bert-1-wide, ...)")
    if m.norm != "post":
        raise TLMError(f"this run uses model.norm={m.norm!r} (pre-LN), which HF BertConfig "
                       "cannot express", "export a post-LN run (model.norm=post)")
    if m.head_dim and m.head_dim * m.heads != m.hidden:
        raise TLMError(f"model.head_dim={m.head_dim} x heads={m.heads} != hidden={m.hidden}, "
                       "which HF BertConfig cannot express", "export a run with head_dim=0")
    if m.activation not in _OUR_ACT:
        raise TLMError(f"model.activation={m.activation!r} has no HF equivalent",
                       f"use one of: {', '.join(_OUR_ACT)}")


# ----------------------------------------------------------------------------- weight mapping


def _normalise_keys(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the ``bert.`` prefix, rename ``gamma``/``beta``, drop buffers."""
    out = {}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue
        k = k.removeprefix("bert.")
        if "LayerNorm" in k:
            k = k.replace(".gamma", ".weight").replace(".beta", ".bias")
        out[k] = v
    return out


class _Taker:
    """Pulls tensors out of a state dict, checking presence and shape."""

    def __init__(self, sd: dict[str, np.ndarray], where: str) -> None:
        self.sd, self.where, self.used = sd, where, set()

    def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.sd:
            raise TLMError(f"tensor '{name}' is missing from {self.where}",
                           "the weights do not match config.json: use a complete checkpoint")
        x = self.sd[name]
        if tuple(x.shape) != tuple(shape):
            raise TLMError(f"tensor '{name}' in {self.where} has shape {tuple(x.shape)}, expected "
                           f"{tuple(shape)} from config.json",
                           "the weights do not match config.json")
        self.used.add(name)
        return np.asarray(x, dtype=np.float32)

    def has(self, name: str) -> bool:
        return name in self.sd


def _fresh_mlm_head(m: ModelConfig, seed: int = 0) -> dict[str, Any]:
    """An MLM head initialised as :class:`~tlm_jax.models.bert.MLMHead` initialises it."""
    rng = np.random.default_rng(seed)
    h = m.hidden
    return {"transform": {"kernel": (rng.standard_normal((h, h)) * m.init_std).astype(np.float32),
                          "bias": np.zeros(h, np.float32)},
            "norm": {"scale": np.ones(h, np.float32), "bias": np.zeros(h, np.float32)},
            "bias": np.zeros(m.vocab_size, np.float32)}


def hf_state_to_params(sd: dict[str, np.ndarray], m: ModelConfig, arch: str,
                       where: str = "the checkpoint") -> tuple[dict[str, Any], dict[str, Any]]:
    """Our ``params`` tree (numpy float32) from an HF BERT state dict.

    Returns ``(params, extras)``; ``extras`` holds ``classifier`` arrays for
    ``BertForSequenceClassification`` and ``unused`` (tensor names not mapped).
    """
    sd = _normalise_keys(sd)
    take = _Taker(sd, where)
    h, v, nh = m.hidden, m.vocab_size, m.heads
    hd = h // nh

    def ln(prefix: str) -> dict[str, np.ndarray]:
        return {"scale": take(f"{prefix}.weight", (h,)), "bias": take(f"{prefix}.bias", (h,))}

    def lin(prefix: str, n_in: int, n_out: int) -> dict[str, np.ndarray]:
        return {"kernel": take(f"{prefix}.weight", (n_out, n_in)).T.copy(),
                "bias": take(f"{prefix}.bias", (n_out,))}

    params: dict[str, Any] = {"embeddings": {
        "word": {"embedding": take("embeddings.word_embeddings.weight", (v, h))},
        "position": {"embedding": take("embeddings.position_embeddings.weight", (m.max_len, h))},
        "token_type": {"embedding": take("embeddings.token_type_embeddings.weight",
                                         (m.type_vocab_size, h))},
        "norm": ln("embeddings.LayerNorm")}}
    for i in range(m.layers):
        p = f"encoder.layer.{i}"
        qkv = [lin(f"{p}.attention.self.{n}", h, h) for n in ("query", "key", "value")]
        out = lin(f"{p}.attention.output.dense", h, h)
        params[f"layer_{i}"] = {
            "attention": {
                "qkv": {"kernel": np.stack([q["kernel"].reshape(h, nh, hd) for q in qkv], axis=1),
                        "bias": np.stack([q["bias"].reshape(nh, hd) for q in qkv])},
                "out": {"kernel": out["kernel"].reshape(nh, hd, h), "bias": out["bias"]}},
            "attention_norm": ln(f"{p}.attention.output.LayerNorm"),
            "mlp": {"wi": lin(f"{p}.intermediate.dense", h, m.intermediate),
                    "wo": lin(f"{p}.output.dense", m.intermediate, h)},
            "mlp_norm": ln(f"{p}.output.LayerNorm")}
    extras: dict[str, Any] = {}
    if take.has("cls.predictions.transform.dense.weight"):
        bias_name = ("cls.predictions.bias" if take.has("cls.predictions.bias")
                     else "cls.predictions.decoder.bias")
        params["mlm"] = {"transform": lin("cls.predictions.transform.dense", h, h),
                         "norm": ln("cls.predictions.transform.LayerNorm"),
                         "bias": take(bias_name, (v,))}
        if take.has("cls.predictions.decoder.weight"):
            dec = take("cls.predictions.decoder.weight", (v, h))
            if not np.array_equal(dec, params["embeddings"]["word"]["embedding"]):
                raise TLMError(f"{where} has an MLM decoder that is not tied to the word "
                               "embeddings", "import a checkpoint with tie_word_embeddings=true")
        take.used.add("cls.predictions.decoder.bias")
    elif arch in ("BertForMaskedLM", "BertForPreTraining"):
        take("cls.predictions.transform.dense.weight", (h, h))  # raises: missing
    else:
        params["mlm"] = _fresh_mlm_head(m)
        extras["fresh_mlm_head"] = True
    if arch == "BertForSequenceClassification":
        if not take.has("classifier.weight"):
            take("classifier.weight", (0, h))  # raises: missing
        n_labels = int(np.shape(sd["classifier.weight"])[0])
        pooler = lin("pooler.dense", h, h)
        cls = lin("classifier", h, n_labels)
        extras["classifier"] = {"pooler_kernel": pooler["kernel"], "pooler_bias": pooler["bias"],
                                "classifier_kernel": cls["kernel"],
                                "classifier_bias": cls["bias"]}
    extras["unused"] = sorted(set(sd) - take.used)
    return params, extras


def params_to_hf_state(params: dict[str, Any], m: ModelConfig, vocab_size: int
                       ) -> dict[str, np.ndarray]:
    """An HF ``BertForMaskedLM`` state dict (float32) from our ``params``.

    ``vocab_size`` rows of the embedding and MLM bias are kept (our padding rows
    beyond the tokenizer are dropped).
    """
    check_exportable(m)
    f = lambda x: np.ascontiguousarray(np.asarray(x, dtype=np.float32))  # noqa: E731
    h, nh = m.hidden, m.heads
    hd = h // nh
    sd: dict[str, np.ndarray] = {}

    def ln(prefix: str, p: dict[str, Any]) -> None:
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = f(p["scale"]), f(p["bias"])

    def lin(prefix: str, p: dict[str, Any]) -> None:
        k = np.asarray(p["kernel"])
        sd[f"{prefix}.weight"] = f(k.reshape(-1, k.shape[-1]).T)
        sd[f"{prefix}.bias"] = f(p["bias"])

    e = params["embeddings"]
    sd["bert.embeddings.word_embeddings.weight"] = f(e["word"]["embedding"][:vocab_size])
    sd["bert.embeddings.position_embeddings.weight"] = f(e["position"]["embedding"])
    sd["bert.embeddings.token_type_embeddings.weight"] = f(e["token_type"]["embedding"])
    ln("bert.embeddings.LayerNorm", e["norm"])
    for i in range(m.layers):
        p, lp = f"bert.encoder.layer.{i}", params[f"layer_{i}"]
        qkv = lp["attention"]["qkv"]
        for j, n in enumerate(("query", "key", "value")):
            sd[f"{p}.attention.self.{n}.weight"] = f(np.asarray(qkv["kernel"])[:, j].reshape(h, h).T)
            sd[f"{p}.attention.self.{n}.bias"] = f(np.asarray(qkv["bias"])[j].reshape(h))
        out = lp["attention"]["out"]
        sd[f"{p}.attention.output.dense.weight"] = f(np.asarray(out["kernel"]).reshape(nh * hd, h).T)
        sd[f"{p}.attention.output.dense.bias"] = f(out["bias"])
        ln(f"{p}.attention.output.LayerNorm", lp["attention_norm"])
        lin(f"{p}.intermediate.dense", lp["mlp"]["wi"])
        lin(f"{p}.output.dense", lp["mlp"]["wo"])
        ln(f"{p}.output.LayerNorm", lp["mlp_norm"])
    mlm = params["mlm"]
    lin("cls.predictions.transform.dense", mlm["transform"])
    ln("cls.predictions.transform.LayerNorm", mlm["norm"])
    sd["cls.predictions.bias"] = f(mlm["bias"][:vocab_size])
    return sd


# ----------------------------------------------------------------------------- tokenizers


def _import_tokenizer(src: Path) -> tuple[Any, bool, str]:
    """``(tokenizer in our form, lowercase, source file name)`` from an HF directory."""
    from tlm_jax.data.tokenizer import load_tokenizer, special_tokens  # noqa: PLC0415

    tc_path = src / "tokenizer_config.json"
    tc: dict[str, Any] = {}
    if tc_path.is_file():
        try:
            tc = json.loads(tc_path.read_text())
        except json.JSONDecodeError as e:
            raise TLMError(f"{tc_path} is not valid JSON", "restore the file") from e
    lowercase = bool(tc.get("do_lower_case", True))
    if (src / "tokenizer.json").is_file():
        name = "tokenizer.json"
        tok = load_tokenizer(src / name)
        norm = (json.loads(tok.to_str()).get("normalizer") or {})
        lowercase = bool(norm.get("lowercase", lowercase))
    elif (src / "vocab.txt").is_file():
        name = "vocab.txt"
        tok = load_tokenizer(src / name, lowercase=lowercase)
    else:
        raise TLMError(f"no tokenizer.json or vocab.txt in {src}",
                       "copy the checkpoint's tokenizer files next to config.json")
    tok.no_truncation()
    tok.no_padding()
    special_tokens(tok)  # refuses vocabularies without [PAD] [UNK] [CLS] [SEP] [MASK]
    return tok, lowercase, name


def _vocab_list(tok: Any) -> list[str]:
    """Tokens by id; an id no token maps to (a duplicated vocab.txt line) gets ``[unusedN]``."""
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    n = max(tok.get_vocab_size(with_added_tokens=True), max(by_id, default=-1) + 1)
    return [by_id.get(i, f"[unused{i}]") for i in range(n)]


def export_tokenizer(tok: Any, out: Path, max_len: int) -> None:
    """Write ``vocab.txt``, ``tokenizer.json`` (BERT template), tokenizer config files."""
    from tokenizers import Tokenizer  # noqa: PLC0415
    from tokenizers.processors import TemplateProcessing  # noqa: PLC0415

    from tlm_jax.data.tokenizer import special_tokens  # noqa: PLC0415

    sp = special_tokens(tok)
    (out / "vocab.txt").write_text("".join(t + "\n" for t in _vocab_list(tok)), encoding="utf-8")
    hf_tok = Tokenizer.from_str(tok.to_str())
    hf_tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", sp.cls), ("[SEP]", sp.sep)])
    hf_tok.no_truncation()
    hf_tok.no_padding()
    hf_tok.save(str(out / "tokenizer.json"))
    norm = json.loads(tok.to_str()).get("normalizer") or {}
    specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                "cls_token": "[CLS]", "mask_token": "[MASK]"}
    tc = {"tokenizer_class": "BertTokenizer", "do_lower_case": bool(norm.get("lowercase", True)),
          "strip_accents": norm.get("strip_accents"),
          "tokenize_chinese_chars": bool(norm.get("handle_chinese_chars", True)),
          "model_max_length": max_len, "clean_up_tokenization_spaces": False, **specials}
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


# ----------------------------------------------------------------------------- import


def _build_config(mfields: dict[str, Any], tokenizer_path: Path, lowercase: bool, name: str,
                  overrides: Sequence[str]) -> Config:
    from omegaconf import OmegaConf  # noqa: PLC0415
    from omegaconf.errors import OmegaConfBaseException  # noqa: PLC0415

    shape = ("hidden", "layers", "heads", "intermediate", "max_len")
    preset = next((n for n, p in sorted(MODEL_PRESETS.items())
                   if all(p.get(k) == mfields[k] for k in shape) and not p.get("conv_blocks")),
                  ModelConfig.preset)  # no preset has this shape: the default, fully overridden
    base = to_dict(load_config(None, [f"model.preset={preset}"]))
    base["name"] = name
    base["model"].update(mfields)
    base["data"].update(tokenizer=str(tokenizer_path), lowercase=lowercase,
                        max_len=min(base["data"]["max_len"], mfields["max_len"]))
    for item in overrides:
        if "=" not in item:
            raise TLMError(f"override '{item}' is not key=value", "write e.g. data.max_len=64")
    try:
        cli = OmegaConf.from_dotlist(list(overrides))
        merged = OmegaConf.merge(OmegaConf.structured(Config), base, cli)
    except OmegaConfBaseException as e:
        raise _fail_override(e, "import-hf overrides") from e
    changed = sorted(k for k in (OmegaConf.to_container(cli).get("model") or {}) if k in SHAPE_KEYS)
    if changed:
        raise TLMError(f"model.{changed[0]} is fixed by the imported checkpoint",
                       "drop that override (only dropout-like model keys may change)")
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(cfg)
    return cfg


def _check_tree(params: dict[str, Any], abstract: dict[str, Any]) -> None:
    import jax  # noqa: PLC0415

    got = jax.tree_util.tree_structure(params)
    want = jax.tree_util.tree_structure(abstract)
    if got != want:
        raise TLMError("the imported parameter tree does not match the model's",
                       "report this as a bug in tlm_jax.hf")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(abstract),
                            strict=True):
        if tuple(np.shape(a)) != tuple(b.shape):
            raise TLMError(f"imported parameter {jax.tree_util.keystr(path)} has shape "
                           f"{np.shape(a)}, the model wants {tuple(b.shape)}",
                           "report this as a bug in tlm_jax.hf")


def import_hf(src: str | Path, workdir: str | Path, overrides: Sequence[str] = (), *,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Turn an HF BERT checkpoint directory into a run directory (see the module docstring).

    Returns a summary dict (architecture, parameters, files written, unused tensors).
    """
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from tlm_jax.data.tokenizer import special_tokens, tokenizer_hash  # noqa: PLC0415
    from tlm_jax.models import build_model, init_variables  # noqa: PLC0415
    from tlm_jax.sharding import unbox  # noqa: PLC0415
    from tlm_jax.train.checkpoint import Checkpointer  # noqa: PLC0415
    from tlm_jax.train.optimizer import make_optimizer  # noqa: PLC0415
    from tlm_jax.train.state import TrainState  # noqa: PLC0415

    src, out = Path(src).expanduser().resolve(), Path(workdir).expanduser().resolve()
    hf = read_hf_config(src)
    hf_architecture(hf, where=str(src / "config.json"))  # refuse e.g. RoBERTa before reading
    mfields = hf_to_model_config(hf, str(src / "config.json"))
    tok, lowercase, tok_name = _import_tokenizer(src)
    sp = special_tokens(tok)
    if sp.vocab_size > mfields["vocab_size"]:
        raise TLMError(f"{src / tok_name} has {sp.vocab_size} tokens but config.json vocab_size "
                       f"is {mfields['vocab_size']}", "use the checkpoint's own tokenizer")
    sd, files = read_hf_weights(src)
    arch = hf_architecture(hf, sd, str(src / "config.json"))
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise TLMError(f"{out} already holds a run (checkpoints/)", "use a new --workdir")
    tok_path = out / "tokenizer.json"
    cfg = _build_config(mfields, tok_path, lowercase, f"import-hf:{src.name}", overrides)
    params, extras = hf_state_to_params(sd, cfg.model, arch, f"{src.name}/{files[0]}")

    model = build_model(cfg.model)
    abstract = jax.eval_shape(lambda r: unbox(init_variables(model, r, cfg.data.max_len)),
                              jax.random.PRNGKey(0))
    _check_tree(params, abstract["params"])
    if any(k != "params" for k in abstract):
        raise TLMError("the model has non-parameter state HF BERT cannot provide",
                       "report this as a bug in tlm_jax.hf")
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused import leaves nothing behind
    tok.save(str(tok_path))
    save_config(cfg, out / "config.json")
    jparams = jax.tree.map(jnp.asarray, params)
    tx, _ = make_optimizer(cfg.optim, max(cfg.train.steps, 1))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=jparams, opt_state=tx.init(jparams),
                       model_state={}, rng=jax.random.PRNGKey(cfg.train.seed))
    meta = {"config": to_dict(cfg), "tokenizer_hash": tokenizer_hash(tok), "step": 0,
            "imported_from": str(src), "hf_architecture": arch}
    ckpt = Checkpointer(out / "checkpoints", every=1, keep=cfg.train.keep_checkpoints,
                        async_save=False, log=log)
    try:
        ckpt.save(0, state, {}, meta, force=True)
    finally:
        ckpt.close()
    written = ["config.json", "tokenizer.json", "checkpoints/0"]
    if "classifier" in extras:
        np.savez(out / "classifier.npz", **extras["classifier"])
        id2label = hf.get("id2label") or {str(i): f"LABEL_{i}"
                                          for i in range(len(extras["classifier"]["classifier_bias"]))}
        (out / "classifier.json").write_text(json.dumps({
            "num_labels": len(extras["classifier"]["classifier_bias"]), "id2label": id2label,
            "problem_type": hf.get("problem_type"), "pooling": "cls+tanh pooler",
            "source": str(src)}, indent=2) + "\n")
        written += ["classifier.npz", "classifier.json"]
    n_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    summary = {"architecture": arch, "parameters": n_params, "workdir": str(out),
               "written": written, "unused_tensors": extras["unused"],
               "fresh_mlm_head": bool(extras.get("fresh_mlm_head")), "weights": files}
    log(f"imported {arch} ({n_params:,} parameters) from {src} into {out}: "
        f"{', '.join(written)}")
    if extras["unused"]:
        log(f"not imported: {', '.join(extras['unused'][:8])}"
            f"{' ...' if len(extras['unused']) > 8 else ''}")
    if extras.get("fresh_mlm_head"):
        log("the checkpoint has no MLM head: a freshly initialised one was added")
    return summary


# ----------------------------------------------------------------------------- export


def load_run_weights(run: str | Path, *, log: Callable[[str], None] = print
                     ) -> tuple[Config, Any, dict[str, Any], dict[str, Any], int]:
    """``(config, tokenizer, params, model_state, step)`` of a run's newest restorable checkpoint."""
    import flax.linen as nn  # noqa: PLC0415
    import jax  # noqa: PLC0415

    from tlm_jax import sharding as shd  # noqa: PLC0415
    from tlm_jax.data.tokenizer import load_tokenizer  # noqa: PLC0415
    from tlm_jax.tasks.finetune import load_pretrained_variables  # noqa: PLC0415

    run = Path(run).expanduser().resolve()
    if not (run / "config.json").is_file():
        raise TLMError(f"{run} is not a tlm_jax run directory (no config.json)",
                       "pass the --workdir of `tlm pretrain` or `tlm import-hf`")
    cfg = read_config(run / "config.json")
    if not (run / "tokenizer.json").is_file():
        raise TLMError(f"{run} has no tokenizer.json", "pass a complete run directory")
    tok = load_tokenizer(run / "tokenizer.json")
    mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with jax.set_mesh(mesh), nn.logical_axis_rules(shd.LOGICAL_RULES):
        params, model_state, step = load_pretrained_variables(run, mesh, log=log)
    return cfg, tok, params, model_state, step


def export_hf(run: str | Path, out: str | Path, *, force: bool = False,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write run ``run`` as an HF ``BertForMaskedLM`` directory ``out`` (see the module docstring)."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    from tlm_jax.data.tokenizer import special_tokens  # noqa: PLC0415

    run, out = Path(run).expanduser().resolve(), Path(out).expanduser().resolve()
    if (run / "config.json").is_file():
        check_exportable(read_config(run / "config.json").model)  # before loading anything
    if out.exists() and any(out.iterdir()) and not force:
        raise TLMError(f"{out} exists and is not empty", "pass --force or choose a new --out")
    cfg, tok, params, _, step = load_run_weights(run, log=log)
    sp = special_tokens(tok)
    n_vocab = len(_vocab_list(tok))
    if n_vocab > cfg.model.vocab_size:
        raise TLMError(f"the run's tokenizer has {n_vocab} tokens but the model only "
                       f"{cfg.model.vocab_size}", "the run directory is inconsistent")
    sd = params_to_hf_state(params, cfg.model, n_vocab)
    out.mkdir(parents=True, exist_ok=True)
    hf_cfg = model_config_to_hf(cfg.model, n_vocab, sp.pad)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True) + "\n")
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    export_tokenizer(tok, out, cfg.model.max_len)
    dropped = sorted(k for k in params if k not in {"embeddings", "mlm"}
                     and not k.startswith("layer_"))
    summary = {"run": str(run), "out": str(out), "step": step, "vocab_size": n_vocab,
               "tensors": len(sd), "dropped": dropped}
    log(f"exported {run} (step {step}) as BertForMaskedLM to {out}: config.json "
        "model.safetensors vocab.txt tokenizer.json tokenizer_config.json "
        "special_tokens_map.json")
    if dropped:
        log(f"not exported (no HF BertForMaskedLM counterpart): {', '.join(dropped)}")
    return summary


__all__ = ["SUPPORTED_ARCHITECTURES", "check_exportable", "export_hf", "hf_state_to_params",
           "hf_to_model_config", "import_hf", "load_run_weights", "model_config_to_hf",
           "params_to_hf_state", "read_hf_weights", "read_safetensors", "read_torch_bin"]
