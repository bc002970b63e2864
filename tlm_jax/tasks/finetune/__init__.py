"""Fine-tuning a pretrained run (or its random-init twin) on a classification task.

``finetune(cfg, pretrained, workdir, seeds)`` is what ``tlm finetune`` runs:

1. **Model and tokenizer.** ``pretrained`` is a ``tlm pretrain`` run directory:
   its ``config.json`` gives the architecture, its ``tokenizer.json`` the
   vocabulary, its newest checkpoint the encoder weights (the pretraining heads
   are dropped). ``pretrained=None`` (``--pretrained none``) is the *twin*: the
   same architecture with random weights. The twin still needs a vocabulary, so
   it takes ``tokenizer_from``: a run directory (architecture *and* tokenizer of
   that run -- the exact twin of fine-tuning that run) or a ``tokenizer.json`` /
   ``vocab.txt`` file (architecture from the ``model.*`` settings).
2. **Data.** The task (:mod:`tlm_jax.tasks`) is split per seed
   (``task.split_seed=-1``: the split seed is the run seed, so seeds vary the
   data sample too; pretrained and twin runs with the same seed see the same
   split). Texts are tokenized with the run's tokenizer, wrapped in
   ``[CLS] .. [SEP]``, truncated to the run's ``data.max_len`` (or
   ``task.max_len``) and padded to the longest example (multiple of 8).
3. **Training.** The classification loss is an
   :class:`~tlm_jax.objectives.base.Objective` (:class:`ClassificationObjective`),
   so the step is the pretraining step (:func:`~tlm_jax.train.step.make_train_step`)
   jitted over the same mesh with the same state shardings; the model carries
   ``model_state`` (BatchNorm statistics) through. AdamW with warmup and linear
   decay; ``head.freeze_encoder`` zeroes encoder updates (and stops its gradient).
4. **Early stopping** on the validation split (``train.metric``, checked every
   ``train.eval_every`` steps, default once per epoch; ``train.patience`` checks
   without improvement end the run) and the best checkpoint is evaluated on test.
5. **Outputs**: ``OUT/seed_<s>/`` holds ``results.json``, ``metrics.jsonl``,
   ``test_logits.npy``, ``checkpoints/`` (latest, for resuming) and ``best/``;
   ``OUT/results.json`` aggregates the seeds (mean ± 95 % CI via
   :func:`~tlm_jax.eval.metrics.mean_ci95`) next to the TF-IDF + logistic
   regression baseline on the same splits. A seed whose ``results.json`` exists
   is skipped, an interrupted one resumes from its checkpoint.
"""

from tlm_jax.tasks.finetune.backbone import (
    Backbone,
    encode_texts,
    load_task_data,
    pad_rows,
    resolve_backbone,
    seq_length,
)
from tlm_jax.tasks.finetune.compiled import (
    ClassificationObjective,
    Compiled,
    make_finetune_optimizer,
    predict_logits,
)
from tlm_jax.tasks.finetune.config import (
    FinetuneConfig,
    FinetuneTrainConfig,
    HeadConfig,
    TaskConfig,
    load_finetune_config,
    model_overrides,
    parse_task_arg,
    validate_finetune,
)
from tlm_jax.tasks.finetune.loop import finetune, finetune_seed
from tlm_jax.tasks.finetune.report import paired_gap, summarize_seeds
from tlm_jax.train.pretrained import load_pretrained_variables

__all__ = [
    "Backbone",
    "ClassificationObjective",
    "Compiled",
    "FinetuneConfig",
    "FinetuneTrainConfig",
    "HeadConfig",
    "TaskConfig",
    "encode_texts",
    "finetune",
    "finetune_seed",
    "load_finetune_config",
    "load_pretrained_variables",
    "load_task_data",
    "make_finetune_optimizer",
    "model_overrides",
    "pad_rows",
    "paired_gap",
    "parse_task_arg",
    "predict_logits",
    "resolve_backbone",
    "seq_length",
    "summarize_seeds",
    "validate_finetune",
]
