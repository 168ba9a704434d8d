"""MobileNetV2 as Keras `MobileNetV2(alpha, include_top)` builds it, in Flax linen.

Input: float NHWC in [0, 1] (KD-Loss feeds pixel/255); no normalisation inside unless `input_mean`
/ `input_std` are set (Keras' `mobilenet_v2.preprocess_input`, x/127.5 − 1, is mean = std = 0.5).
Padding is TF 'SAME' (`padding='same'`), which equals Keras' explicit `correct_pad` + 'valid'
before the stride-2 depthwise convolutions at every input size; `padding='symmetric'` pads 1 on
every side like torchvision's `mobilenet_v2` (with `bn_epsilon=1e-5`, as the import tool sets for
torch weights).
`__call__(x, *, train)` returns `(out, features)`:

- `out`: (B, num_outputs), or the pooled features (B, C_last) when `num_outputs` is None;
- `features`: `stem` (stride 2, after BN+ReLU6), `stage_1` … `stage_7` (output of the last block of
  each inverted-residual group (t, c, n, s); strides 2, 4, 8, 16, 16, 32, 32 and 16, 24, 32, 64, 96,
  160, 320 channels at width 1), `last_conv` (the 1x1 → 1280 map after BN+ReLU6, only when
  `include_last_conv`), `pre_logits` (the global-average-pooled vector, before dropout).

Parameter names mirror the Keras layers: `stem_conv`/`stem_bn`, `block_{i}/{expand,depthwise,
project}[_bn]` with i counted over all 17 blocks as Keras `block_id`, `last_conv`/`last_bn`, `head`.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fkd.models import batch_norm
from fkd.models.layers import Conv1x1, DepthwiseConv, make_divisible, normalize_input, relu6

Array = jax.Array

# (expansion t, channels c, repeats n, stride s) of the inverted-residual groups.
MOBILENET_V2_BLOCKS = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)

# Keras defaults: Conv2D/DepthwiseConv2D/Dense use glorot_uniform kernels and zero biases. For the
# depthwise kernel Keras' (k, k, C, 1) and our (k, k, 1, C) have the same fan_in + fan_out.
_glorot = nn.initializers.glorot_uniform()


class InvertedResidual(nn.Module):
  """[1x1 expand → BN → ReLU6] → 3x3 depthwise → BN → ReLU6 → 1x1 project → BN (+ input)."""

  expansion: int
  features: int
  strides: int
  bn_momentum: float
  bn_epsilon: float
  depthwise_impl: str = 'auto'
  padding: str = 'same'
  dtype: Any = None
  folded: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    bn = batch_norm.factory(train, self.bn_momentum, self.bn_epsilon, self.dtype, self.folded)
    cin = x.shape[-1]
    y = x
    if self.expansion != 1:
      y = Conv1x1(
        self.expansion * cin, use_bias=False, kernel_init=_glorot, dtype=self.dtype, name='expand'
      )(y)
      y = bn('expand_bn', relu6)(y)
    y = DepthwiseConv(
      3,
      self.strides,
      impl=self.depthwise_impl,
      padding=self.padding,
      kernel_init=_glorot,
      dtype=self.dtype,
      name='depthwise',
    )(y)
    y = bn('depthwise_bn', relu6)(y)
    y = Conv1x1(
      self.features, use_bias=False, kernel_init=_glorot, dtype=self.dtype, name='project'
    )(y)
    y = bn('project_bn')(y)
    if self.strides == 1 and cin == self.features:
      y = y + x
    return y


class MobileNetV2(nn.Module):
  """Keras MobileNetV2 (`alpha` = `width`); see the module docstring for outputs and features.

  Attributes:
    num_outputs: size of the Dense head (glorot-uniform kernel, zero bias); None = no head.
    width: Keras alpha; channels `make_divisible(int(c * width), 8)`.
    depth: multiplies the repeats n of each group (rounded up, at least 1); 1.0 = paper.
    include_last_conv: the final 1x1 conv to 1280 (+BN+ReLU6); MobileFAN drops it.
    dropout: dropout rate before the head ('dropout' rng, train only).
    bn_momentum, bn_epsilon: Keras values 0.999 and 1e-3.
    depthwise_impl: 'auto' | 'shifted' | 'shifted_autodiff' | 'grouped' (see layers.py).
    padding: 'same' (Keras) | 'symmetric' (torchvision).
    input_mean, input_std: per-channel input normalisation (x − mean) / std of the [0, 1] input;
      None = none (see `layers.normalize_input`).
    dtype: computation dtype (params stay float32).
    folded: inference form with BatchNorm folded into the convolutions (variables from
      `fkd.models.fold.fold_batch_norm`; `train=False` only).
  """

  num_outputs: int | None = None
  width: float = 1.0
  depth: float = 1.0
  include_last_conv: bool = True
  dropout: float = 0.0
  bn_momentum: float = 0.999
  bn_epsilon: float = 1e-3
  depthwise_impl: str = 'auto'
  padding: str = 'same'
  input_mean: tuple[float, ...] | None = None
  input_std: tuple[float, ...] | None = None
  dtype: Any = None
  folded: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> tuple[Array, dict[str, Array]]:
    bn = batch_norm.factory(train, self.bn_momentum, self.bn_epsilon, self.dtype, self.folded)
    features = {}
    x = normalize_input(x, self.input_mean, self.input_std)
    x = nn.Conv(
      make_divisible(32 * self.width, 8),
      (3, 3),
      strides=2,
      padding='SAME' if self.padding == 'same' else ((1, 1), (1, 1)),
      use_bias=False,
      kernel_init=_glorot,
      dtype=self.dtype,
      name='stem_conv',
    )(x)
    x = features['stem'] = bn('stem_bn', relu6)(x)

    block_id = 0
    for stage, (t, c, n, s) in enumerate(MOBILENET_V2_BLOCKS, start=1):
      for i in range(max(1, math.ceil(n * self.depth))):
        x = InvertedResidual(
          t,
          make_divisible(int(c * self.width), 8),
          s if i == 0 else 1,
          self.bn_momentum,
          self.bn_epsilon,
          self.depthwise_impl,
          self.padding,
          self.dtype,
          self.folded,
          name=f'block_{block_id}',
        )(x, train=train)
        block_id += 1
      features[f'stage_{stage}'] = x

    if self.include_last_conv:
      last = make_divisible(1280 * self.width, 8) if self.width > 1.0 else 1280
      x = Conv1x1(last, use_bias=False, kernel_init=_glorot, dtype=self.dtype, name='last_conv')(x)
      x = features['last_conv'] = bn('last_bn', relu6)(x)

    x = features['pre_logits'] = jnp.mean(x, axis=(1, 2))
    if self.num_outputs is None:
      return x, features
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    x = nn.Dense(
      self.num_outputs,
      kernel_init=_glorot,
      bias_init=nn.initializers.zeros_init(),
      dtype=self.dtype,
      name='head',
    )(x)
    return x, features
