"""Convolutional front-end of the paper's BERT-1 variants ("Tiny language models", arXiv 2507.14871).

Before the single transformer layer, the ``[length, hidden]`` map of (normalised)
embeddings of each example is treated as a one-channel image and passed through
``cfg.conv_blocks`` blocks of

    Conv2d(kernel = cfg.conv_kernel, cfg.conv_channels channels, 'same' padding)
    -> BatchNorm -> GELU (exact erf)

and a final 1x1 convolution back to one channel, so the output has the input's
``[batch, length, hidden]`` shape. ``cfg.conv_kernel = [kh, kw]`` is ``kh`` along
the sequence and ``kw`` along the hidden dimension (the paper's "16x3" kernel
spans 16 tokens and 3 hidden units).

BatchNorm keeps running statistics in the ``batch_stats`` collection:
``deterministic=False`` (training) normalises with the batch statistics and
updates the running averages (the collection must be mutable, which
:func:`tlm_jax.models.apply_model` arranges in train mode, and the train step
stores the result in ``TrainState.model_state``); ``deterministic=True``
(evaluation) normalises with the running averages. Momentum 0.9 and epsilon
1e-5 are PyTorch's ``BatchNorm2d`` defaults (PyTorch's momentum 0.1 is the
weight of the new batch; flax's momentum is the weight of the old average).
Statistics are per channel over batch x length x hidden, padding included, as
in ``BatchNorm2d``. Convolution kernels are initialised as PyTorch's ``Conv2d``
(uniform, bound ``1/sqrt(fan_in)``) and carry biases, as PyTorch's do.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tlm_jax.config import ModelConfig
from tlm_jax.errors import TLMError
from tlm_jax.models.layers import activation
from tlm_jax.models.linear import dtype_of

# PyTorch's default Conv2d initialisation: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), +).
_TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def check_conv_config(cfg: ModelConfig) -> tuple[int, int]:
    """Validate the conv settings of ``cfg``; returns the kernel as ``(kh, kw)``.

    Raises:
        TLMError: a kernel that is not two positive sizes, or a non-positive channel
            count or block count.
    """
    kernel = tuple(int(k) for k in cfg.conv_kernel)
    if len(kernel) != 2 or min(kernel) <= 0:
        raise TLMError(f"model.conv_kernel={list(cfg.conv_kernel)} is not two positive sizes",
                       "write e.g. model.conv_kernel=[3,3] or [16,3] (sequence, hidden)")
    if cfg.conv_channels <= 0:
        raise TLMError(f"model.conv_channels={cfg.conv_channels} must be positive",
                       "use e.g. 32 or 64")
    if cfg.conv_blocks <= 0:
        raise TLMError(f"model.conv_blocks={cfg.conv_blocks}: the conv front-end needs >= 1 block",
                       "set model.conv_blocks=2 or 3, or 0 for no front-end")
    return kernel[0], kernel[1]


class ConvBlock(nn.Module):
    """``Conv2d -> BatchNorm -> GELU`` on ``[batch, length, hidden, channels]`` maps."""

    channels: int
    kernel: tuple[int, int]
    act: str = "gelu"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        x = nn.Conv(
            self.channels, self.kernel, padding="SAME", use_bias=True, dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(_TORCH_CONV_INIT,
                                                     ("conv_h", "conv_w", None, "channels")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("channels",)),
            name="conv")(x)
        x = nn.BatchNorm(
            use_running_average=deterministic, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
            dtype=jnp.float32, param_dtype=self.param_dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("channels",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("channels",)),
            name="norm")(x)
        return activation(self.act)(x).astype(self.dtype)


class ConvFrontEnd(nn.Module):
    """The paper's convolutional front-end: ``[B, L, H] -> [B, L, H]``.

    Attributes:
        cfg: the model config; uses ``conv_blocks``, ``conv_channels``,
            ``conv_kernel``, ``activation``, ``dtype`` and ``param_dtype``.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        c = self.cfg
        kernel = check_conv_config(c)
        dt, pdt = dtype_of(c.dtype), dtype_of(c.param_dtype)
        h = x[..., None]  # one-channel image: [batch, length (height), hidden (width), 1]
        for i in range(c.conv_blocks):
            h = ConvBlock(c.conv_channels, kernel, c.activation, dt, pdt, name=f"block_{i}")(
                h, deterministic)
        h = nn.Conv(
            1, (1, 1), padding="SAME", use_bias=True, dtype=dt, param_dtype=pdt,
            kernel_init=nn.with_logical_partitioning(_TORCH_CONV_INIT,
                                                     ("conv_h", "conv_w", "channels", None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (None,)),
            name="project")(h)
        out = h[..., 0].astype(dt)
        return nn.with_logical_constraint(out, ("batch", "length", "embed"))


def conv_param_count(cfg: ModelConfig) -> int:
    """Closed-form parameter count of the front-end (BatchNorm statistics excluded)."""
    kh, kw = check_conv_config(cfg)
    ch, n, cin, total = cfg.conv_channels, cfg.conv_blocks, 1, 0
    for _ in range(n):
        total += kh * kw * cin * ch + ch + 2 * ch  # conv kernel + bias, BatchNorm scale + bias
        cin = ch
    return total + cin + 1  # 1x1 projection to one channel, with bias
