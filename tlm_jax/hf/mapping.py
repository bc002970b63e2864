"""Ours <-> HF BERT: architectures, ``BertConfig`` <-> ``model.*`` and state dict <-> ``params``.

See :mod:`tlm_jax.hf` for the parameter mapping.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tlm_jax.config import ModelConfig, show
from tlm_jax.errors import TLMError

SUPPORTED_ARCHITECTURES = ("BertForMaskedLM", "BertForPreTraining",
                           "BertForSequenceClassification", "BertModel")
_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
           "relu": "relu"}
_OUR_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
# Model keys the checkpoint fixes (import-hf overrides may not change them).
SHAPE_KEYS = ("arch", "vocab_size", "hidden", "layers", "heads", "head_dim", "intermediate",
              "max_len", "type_vocab_size", "conv_blocks", "activation")

# ----------------------------------------------------------------------------- config mapping


def hf_architecture(hf: dict[str, Any], state: dict[str, np.ndarray] | None = None,
                    where: str = "config.json") -> str:
    """The supported HF architecture named by ``hf`` (inferred from ``state`` if unnamed)."""
    model_type = hf.get("model_type", "")
    archs = hf.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else ""
    if (model_type != "bert" or not isinstance(archs, list)
            or (arch and (not isinstance(arch, str) or arch not in SUPPORTED_ARCHITECTURES))):
        def plain(x: Any) -> str:  # a short name as is, anything else shortened
            return x if isinstance(x, str) and len(x) <= 40 else show(x)

        raise TLMError(f"unsupported architecture {plain(arch or archs or '(none)')} (model_type "
                       f"{plain(model_type or '(none)')}) in {where}",
                       "import a BERT checkpoint: model_type bert, e.g. BertForMaskedLM "
                       "(`tlm import-hf --help` lists them)")
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

    def num(key: str, kind: type, default: Any = None) -> Any:
        """``hf[key]`` as a finite ``kind`` (int: a whole number); JSON of another type refused."""
        value = need(key) if default is None else hf.get(key, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and kind is int:
            ok = float(value).is_integer() and abs(value) < 2**63
        if not ok:
            raise TLMError(f"{key}={show(value)} in {where} is not a finite "
                           f"{'whole ' if kind is int else ''}number", "fix config.json")
        return kind(value)

    act = hf.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in _HF_ACT:
        raise TLMError(f"hidden_act={show(act)} in {where} is not supported",
                       f"use one of: {', '.join(_HF_ACT)}")
    pos = hf.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise TLMError(f"position_embedding_type={pos!r} in {where} is not supported",
                       "import a BERT with absolute position embeddings")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise TLMError(f"{where} describes a BERT decoder", "import an encoder (is_decoder=false)")
    hidden, heads = num("hidden_size", int), num("num_attention_heads", int)
    if hidden < 1 or heads < 1:
        raise TLMError(f"hidden_size={hidden} and num_attention_heads={heads} in {where} must be "
                       "positive", "fix config.json")
    if hidden % heads:
        raise TLMError(f"hidden_size={hidden} is not divisible by num_attention_heads={heads} "
                       f"in {where}", "fix config.json")
    return dict(arch="bert", vocab_size=num("vocab_size", int), hidden=hidden,
                layers=num("num_hidden_layers", int), heads=heads, head_dim=0,
                intermediate=num("intermediate_size", int),
                max_len=num("max_position_embeddings", int, 512),
                type_vocab_size=num("type_vocab_size", int, 2),
                dropout=num("hidden_dropout_prob", float, 0.1),
                attention_dropout=num("attention_probs_dropout_prob", float, 0.1),
                activation=_HF_ACT[act], layer_norm_eps=num("layer_norm_eps", float, 1e-12),
                init_std=num("initializer_range", float, 0.02), conv_blocks=0)


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
