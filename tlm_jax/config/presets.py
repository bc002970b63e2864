"""Model presets: named architectures (``model.preset``), the paper's and the CPU-sized ones."""

from __future__ import annotations

from typing import Any

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden=128, layers=2, heads=2, intermediate=512),
    "mini": dict(hidden=256, layers=4, heads=4, intermediate=1024),
    "small": dict(hidden=512, layers=4, heads=8, intermediate=2048),
    "base": dict(hidden=768, layers=12, heads=12, intermediate=3072, max_len=512),
    "bert-6": dict(hidden=768, layers=6, heads=12, intermediate=3072, max_len=128),
    "bert-1": dict(hidden=768, layers=1, heads=12, intermediate=3072, max_len=128),
    "bert-1-wide": dict(hidden=1536, layers=1, heads=24, intermediate=6144, max_len=128),
    "bert-6-cpu": dict(hidden=256, layers=6, heads=4, intermediate=1024, max_len=128),
    "bert-1-cpu": dict(hidden=256, layers=1, heads=4, intermediate=1024, max_len=128),
    "bert-1-wide-cpu": dict(hidden=512, layers=1, heads=8, intermediate=2048, max_len=128),
}


def _conv_bert1(heads: int, blocks: int, kernel: tuple[int, int], channels: int) -> dict[str, Any]:
    """A BERT-1 with the paper's conv front-end (tlm_jax/models/conv.py): head size 64, FF 4x."""
    return dict(hidden=64 * heads, layers=1, heads=heads, intermediate=256 * heads, max_len=128,
                conv_blocks=blocks, conv_channels=channels, conv_kernel=list(kernel))


# Convolutional front-end BERT-1 variants: ``bert-1-conv{blocks}-k{kernel}-c{channels}-h{heads}``
# (kernel = sequence x hidden; "k3" = 3x3). ``-cpu``: heads / 3 rounded (12 -> 4 heads, as
# bert-1-cpu; 8 -> 3), head size 64, channels / 4, same blocks and kernel.
# Parameters at BERT's 30,522-token vocabulary (``tlm params``; MLM head included, decoder tied,
# BatchNorm statistics excluded): bert-6 66,692,154 (= HF BertForMaskedLM of that shape);
# bert-1 31,252,794; bert-1-wide 77,810,490; bert-1-conv2-k3-c32-h8 19,151,163;
# bert-1-conv2-k3-c64-h8 19,179,323; bert-1-conv2-k3-c64-h12 31,290,683;
# bert-1-conv3-k3-c32-h12 31,271,835; bert-1-conv2-k16x3-c64-h12 31,452,923;
# bert-1-conv3-k16x3-c64-h12 31,649,723.
MODEL_PRESETS.update({
    "bert-1-conv2-k3-c32-h8": _conv_bert1(8, 2, (3, 3), 32),
    "bert-1-conv2-k3-c64-h8": _conv_bert1(8, 2, (3, 3), 64),
    "bert-1-conv2-k3-c64-h12": _conv_bert1(12, 2, (3, 3), 64),
    "bert-1-conv3-k3-c32-h12": _conv_bert1(12, 3, (3, 3), 32),
    "bert-1-conv2-k16x3-c64-h12": _conv_bert1(12, 2, (16, 3), 64),
    "bert-1-conv3-k16x3-c64-h12": _conv_bert1(12, 3, (16, 3), 64),
    "bert-1-conv2-k3-c32-h8-cpu": _conv_bert1(3, 2, (3, 3), 8),
    "bert-1-conv2-k3-c64-h8-cpu": _conv_bert1(3, 2, (3, 3), 16),
    "bert-1-conv2-k3-c64-h12-cpu": _conv_bert1(4, 2, (3, 3), 16),
    "bert-1-conv3-k3-c32-h12-cpu": _conv_bert1(4, 3, (3, 3), 8),
    "bert-1-conv2-k16x3-c64-h12-cpu": _conv_bert1(4, 2, (16, 3), 16),
    "bert-1-conv3-k16x3-c64-h12-cpu": _conv_bert1(4, 3, (16, 3), 16),
})


def register_model_preset(name: str, **shape: Any) -> None:
    """Add a model preset (used by modules that define extra architectures)."""
    MODEL_PRESETS[name] = dict(shape)
