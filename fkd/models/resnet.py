"""ResNet-50 as `torchvision.models.resnet50` builds it (v1.5: stride on the 3x3), in Flax linen.

The MobileFAN teacher's encoder (method.md §5.3). Padding is PyTorch's symmetric `k // 2` (not TF
'SAME', which pads 224² inputs asymmetrically), the stem max-pool pads with −inf, BatchNorm
ε = 1e-5 and momentum 0.9 (PyTorch 0.1). Input: float NHWC in [0, 1]; torchvision's ImageNet
normalisation is `input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD` (set by
`fkd.tools.import_weights --from=torch`); None = no normalisation.

`__call__(x, *, train)` returns `(out, features)`:

- `out`: (B, num_outputs), or the pooled features (B, 2048) when `num_outputs` is None;
- `features`: `stem` (after conv1/BN/ReLU, stride 2, 64 channels), `stem_pool` (after the max-pool,
  stride 4), `stage_1` … `stage_4` (outputs of layer1 … layer4: strides 4, 8, 16, 32 and 256, 512,
  1024, 2048 channels), `pre_logits` (the global-average-pooled vector).

Parameter names mirror torchvision's state dict: `conv1`, `bn1`, `layer{i}_{j}/{conv1,bn1,conv2,
bn2,conv3,bn3,downsample_conv,downsample_bn}`, and `head` for `fc`. Initialisation follows
torchvision: kaiming-normal (fan_out) convolutions, BN γ = 1, β = 0, and PyTorch's `nn.Linear`
default uniform(±1/√fan_in) for the head.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fkd.models import batch_norm
from fkd.models.layers import Conv1x1, normalize_input

Array = jax.Array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
_head_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((k // 2, k // 2), (k // 2, k // 2))


class Bottleneck(nn.Module):
  """1x1 → 3x3 (stride) → 1x1 (×4), each with BN, ReLU after the sum with the (projected) input."""

  features: int
  strides: int
  bn_momentum: float
  bn_epsilon: float
  dtype: Any = None
  folded: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    bn = batch_norm.factory(train, self.bn_momentum, self.bn_epsilon, self.dtype, self.folded)
    out_features = 4 * self.features
    y = Conv1x1(
      self.features, use_bias=False, kernel_init=_conv_init, dtype=self.dtype, name='conv1'
    )(x)
    y = bn('bn1', nn.relu)(y)
    y = nn.Conv(
      self.features,
      (3, 3),
      self.strides,
      padding=_pad(3),
      use_bias=False,
      kernel_init=_conv_init,
      dtype=self.dtype,
      name='conv2',
    )(y)
    y = bn('bn2', nn.relu)(y)
    y = Conv1x1(
      out_features, use_bias=False, kernel_init=_conv_init, dtype=self.dtype, name='conv3'
    )(y)
    y = bn('bn3')(y)
    if self.strides != 1 or x.shape[-1] != out_features:
      # A 1x1 convolution with stride s and no padding reads every s-th pixel.
      shortcut = x[:, :: self.strides, :: self.strides, :]
      shortcut = Conv1x1(
        out_features,
        use_bias=False,
        kernel_init=_conv_init,
        dtype=self.dtype,
        name='downsample_conv',
      )(shortcut)
      x = bn('downsample_bn')(shortcut)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """torchvision's bottleneck ResNet; see the module docstring for outputs and features.

  Attributes:
    num_outputs: size of the Dense head; None = no head (return pooled features).
    stage_sizes: bottleneck blocks per stage; (3, 4, 6, 3) = ResNet-50.
    width: base channels (64 in torchvision); smaller values make tiny test models.
    bn_momentum, bn_epsilon: PyTorch's 0.1 (Flax 0.9) and 1e-5.
    input_mean, input_std: per-channel input normalisation (x − mean) / std of the [0, 1] input;
      None = none.
    dtype: computation dtype (params stay float32).
    folded: inference form with BatchNorm folded into the convolutions (variables from
      `fkd.models.fold.fold_batch_norm`; `train=False` only).
  """

  num_outputs: int | None = None
  stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
  width: int = 64
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
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
      self.width,
      (7, 7),
      2,
      padding=_pad(7),
      use_bias=False,
      kernel_init=_conv_init,
      dtype=self.dtype,
      name='conv1',
    )(x)
    x = features['stem'] = bn('bn1', nn.relu)(x)
    x = features['stem_pool'] = nn.max_pool(x, (3, 3), (2, 2), padding=_pad(3))
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = Bottleneck(
          self.width * 2**i,
          2 if i > 0 and j == 0 else 1,
          self.bn_momentum,
          self.bn_epsilon,
          self.dtype,
          self.folded,
          name=f'layer{i + 1}_{j}',
        )(x, train=train)
      features[f'stage_{i + 1}'] = x

    x = features['pre_logits'] = jnp.mean(x, axis=(1, 2))
    if self.num_outputs is None:
      return x, features
    fan_in = x.shape[-1]
    bound = 1.0 / fan_in**0.5
    x = nn.Dense(
      self.num_outputs,
      kernel_init=_head_kernel_init,
      bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -bound, bound
      ),
      dtype=self.dtype,
      name='head',
    )(x)
    return x, features
