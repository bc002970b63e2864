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

from tlm_jax.hf.exporter import export_hf, load_run_weights
from tlm_jax.hf.importer import import_hf
from tlm_jax.hf.mapping import (
    SHAPE_KEYS,
    SUPPORTED_ARCHITECTURES,
    check_exportable,
    hf_architecture,
    hf_state_to_params,
    hf_to_model_config,
    model_config_to_hf,
    params_to_hf_state,
)
from tlm_jax.hf.tokenizer import export_tokenizer, import_tokenizer, vocab_list
from tlm_jax.hf.weights import read_hf_config, read_hf_weights, read_safetensors, read_torch_bin

__all__ = ["SHAPE_KEYS", "SUPPORTED_ARCHITECTURES", "check_exportable", "export_hf", "export_tokenizer",
           "hf_architecture", "hf_state_to_params", "hf_to_model_config", "import_hf",
           "import_tokenizer", "load_run_weights", "model_config_to_hf", "params_to_hf_state",
           "read_hf_config", "read_hf_weights", "read_safetensors", "read_torch_bin", "vocab_list"]
