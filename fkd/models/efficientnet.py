"""EfficientNet-B0…B7 as `keras.applications.EfficientNetB*` builds them, in Flax linen.

fkd feeds float NHWC in [0, 1]. Keras' Rescaling(1/255) + Normalization (+ the extra Rescaling of
`weights='imagenet'`) input layers are expressed as `input_mean` / `input_std` on that [0, 1]
input (None = no normalisation, the KD-Loss setting); `fkd.tools.import_weights` sets them from
the source file. Padding is TF 'SAME', which equals Keras' explicit `correct_pad` + 'valid'
before every stride-2 convolution at every input size.
`__call__(x, *, train)` returns `(out, features)`:

- `out`: (B, num_outputs), or the pooled features when `num_outputs` is None;
- `features`: `stem` (stride 2, after BN+swish), `stage_1` … `stage_7` (output of the last MBConv
  block of each stage; strides 2, 4, 8, 16, 16, 32, 32 and 16, 24, 40, 80, 112, 192, 320 channels
  in B0), `top` (the 1x1 → round_filters(1280) map after BN+swish, only when `include_top_conv`),
  `pre_logits` (the global-average-pooled vector, before dropout).

Initialisation follows Keras: convolutions VarianceScaling(2, fan_out, truncated normal) with
Keras' fans (for the depthwise kernel fan_out = k·k). The Dense head uses glorot-uniform / zero
bias, as the KD-Loss teacher head (a plain Keras `Dense`); Keras' own classifier top uses
VarianceScaling(1/3, fan_out, uniform) instead. Parameter counts do not depend on this choice.

Block parameter names follow Keras (`block1a`, `block2a`, `block2b`, …) with sub-layers `expand`,
`expand_bn`, `depthwise`, `depthwise_bn`, `se_reduce`, `se_expand`, `project`, `project_bn`.
"""

from __future__ import annotations

import math
import string
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fkd.models import batch_norm
from fkd.models.layers import Conv1x1, DepthwiseConv, make_divisible, normalize_input

Array = jax.Array

# (expand ratio, kernel, stride, filters_in, filters_out, repeats) of the B0 stages.
EFFICIENTNET_BLOCKS = (
  (1, 3, 1, 32, 16, 1),
  (6, 3, 2, 16, 24, 2),
  (6, 5, 2, 24, 40, 2),
  (6, 3, 2, 40, 80, 3),
  (6, 5, 1, 80, 112, 3),
  (6, 5, 2, 112, 192, 4),
  (6, 3, 1, 192, 320, 1),
)

# name: (width_coefficient, depth_coefficient, resolution, dropout) as in Keras.
EFFICIENTNET_PARAMS = {
  'b0': (1.0, 1.0, 224, 0.2),
  'b1': (1.0, 1.1, 240, 0.2),
  'b2': (1.1, 1.2, 260, 0.3),
  'b3': (1.2, 1.4, 300, 0.3),
  'b4': (1.4, 1.8, 380, 0.4),
  'b5': (1.6, 2.2, 456, 0.4),
  'b6': (1.8, 2.6, 528, 0.5),
  'b7': (2.0, 3.1, 600, 0.5),
}

_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal')
_depthwise_init = nn.initializers.variance_scaling(
  2.0, 'fan_out', 'truncated_normal', in_axis=-1, out_axis=-2
)
_dense_init = nn.initializers.glorot_uniform()


class MBConv(nn.Module):
  """Mobile inverted bottleneck with squeeze-excitation and drop-connect (Keras `block`)."""

  expand_ratio: int
  kernel_size: int
  strides: int
  features: int
  drop_rate: float
  se_ratio: float = 0.25
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  depthwise_impl: str = 'auto'
  dtype: Any = None
  folded: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    bn = batch_norm.factory(train, self.bn_momentum, self.bn_epsilon, self.dtype, self.folded)
    cin = x.shape[-1]
    filters = cin * self.expand_ratio
    y = x
    expand_bias = None
    if self.expand_ratio != 1:
      y = Conv1x1(filters, use_bias=False, kernel_init=_conv_init, dtype=self.dtype, name='expand')(
        y
      )
      if self.folded:  # applied by the depthwise convolution below
        expand_bias = batch_norm.FoldedBias(name='expand_bn')(filters)
      else:
        y = bn('expand_bn', nn.swish)(y)
    depthwise = DepthwiseConv(
      self.kernel_size,
      self.strides,
      impl=self.depthwise_impl,
      kernel_init=_depthwise_init,
      dtype=self.dtype,
      name='depthwise',
    )
    if self.folded:  # inference: expand's activation, the conv, its bias, swish and the SE
      # pooling in one pass where native (`DepthwiseConv` swish_bias)
      y, pooled = depthwise(y, batch_norm.FoldedBias(name='depthwise_bn')(filters), expand_bias)
    else:
      y = bn('depthwise_bn', nn.swish)(depthwise(y))
      pooled = jnp.mean(y, axis=(1, 2))
    if 0 < self.se_ratio <= 1:
      se = pooled[:, None, None, :]
      se = nn.swish(
        Conv1x1(
          max(1, int(cin * self.se_ratio)),
          kernel_init=_conv_init,
          dtype=self.dtype,
          name='se_reduce',
        )(se)
      )
      se = nn.sigmoid(
        Conv1x1(filters, kernel_init=_conv_init, dtype=self.dtype, name='se_expand')(se)
      )
      if train:
        y, se = y * se, None
    else:
      se = None
    # In inference the gate goes into the projection (`Conv1x1` input_scale: on CPU a per-image
    # kernel, so the gated activation is never written); training keeps the plain product.
    y = Conv1x1(
      self.features, use_bias=False, kernel_init=_conv_init, dtype=self.dtype, name='project'
    )(y, None if se is None else se.reshape(se.shape[0], filters))
    y = bn('project_bn')(y)
    if self.strides == 1 and cin == self.features:
      y = nn.Dropout(self.drop_rate, broadcast_dims=(1, 2, 3))(y, deterministic=not train)
      y = y + x
    return y


class EfficientNet(nn.Module):
  """Keras EfficientNet; see the module docstring for outputs and features.

  Attributes:
    num_outputs: size of the Dense head; None = no head (return pooled features).
    width_coefficient, depth_coefficient: compound-scaling coefficients (B0 = 1.0, 1.0).
    dropout: top dropout before the head (Keras preset 0.2–0.5; KD-Loss teachers 0.5).
    drop_connect_rate: stochastic depth, `drop_connect_rate * b / num_blocks` for block b.
    bn_momentum, bn_epsilon: Keras values 0.99 and 1e-3.
    depthwise_impl: 'auto' | 'shifted' | 'shifted_autodiff' | 'grouped' (see layers.py).
    include_top_conv: the final 1x1 conv to round_filters(1280) (+BN+swish).
    width_scale, depth_scale: CPU knobs multiplying the coefficients (1.0 = preset), e.g. to
      shrink a B3 teacher for smoke runs.
    input_mean, input_std: per-channel input normalisation (x − mean) / std of the [0, 1] input;
      None = none (see `layers.normalize_input`).
    dtype: computation dtype (params stay float32).
    folded: inference form with BatchNorm folded into the convolutions (variables from
      `fkd.models.fold.fold_batch_norm`; `train=False` only).
  """

  num_outputs: int | None = None
  width_coefficient: float = 1.0
  depth_coefficient: float = 1.0
  dropout: float = 0.2
  drop_connect_rate: float = 0.2
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  depthwise_impl: str = 'auto'
  include_top_conv: bool = True
  width_scale: float = 1.0
  depth_scale: float = 1.0
  input_mean: tuple[float, ...] | None = None
  input_std: tuple[float, ...] | None = None
  dtype: Any = None
  folded: bool = False

  def round_filters(self, filters: int) -> int:
    return make_divisible(filters * self.width_coefficient * self.width_scale, 8)

  def round_repeats(self, repeats: int) -> int:
    return int(math.ceil(self.depth_coefficient * self.depth_scale * repeats))

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> tuple[Array, dict[str, Array]]:
    bn = batch_norm.factory(train, self.bn_momentum, self.bn_epsilon, self.dtype, self.folded)
    features = {}
    x = normalize_input(x, self.input_mean, self.input_std)
    x = nn.Conv(
      self.round_filters(32),
      (3, 3),
      strides=2,
      padding='SAME',
      use_bias=False,
      kernel_init=_conv_init,
      dtype=self.dtype,
      name='stem_conv',
    )(x)
    x = features['stem'] = bn('stem_bn', nn.swish)(x)

    num_blocks = sum(self.round_repeats(a[-1]) for a in EFFICIENTNET_BLOCKS)
    b = 0
    for stage, (t, k, s, _, cout, n) in enumerate(EFFICIENTNET_BLOCKS, start=1):
      for i in range(self.round_repeats(n)):
        x = MBConv(
          t,
          k,
          s if i == 0 else 1,
          self.round_filters(cout),
          self.drop_connect_rate * b / num_blocks,
          bn_momentum=self.bn_momentum,
          bn_epsilon=self.bn_epsilon,
          depthwise_impl=self.depthwise_impl,
          dtype=self.dtype,
          folded=self.folded,
          name=f'block{stage}{string.ascii_lowercase[i]}',
        )(x, train=train)
        b += 1
      features[f'stage_{stage}'] = x

    if self.include_top_conv:
      x = Conv1x1(
        self.round_filters(1280),
        use_bias=False,
        kernel_init=_conv_init,
        dtype=self.dtype,
        name='top_conv',
      )(x)
      x = features['top'] = bn('top_bn', nn.swish)(x)

    x = features['pre_logits'] = jnp.mean(x, axis=(1, 2))
    if self.num_outputs is None:
      return x, features
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    x = nn.Dense(
      self.num_outputs,
      kernel_init=_dense_init,
      bias_init=nn.initializers.zeros_init(),
      dtype=self.dtype,
      name='head',
    )(x)
    return x, features
