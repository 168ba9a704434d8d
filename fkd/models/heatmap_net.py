"""Heatmap networks: MobileFAN and EfficientFAN students, the Simple Baselines teacher.

One encoder–decoder module, `HeatmapNet`: any registered backbone's last spatial feature map →
three ×2 decoder stages → a 1x1 head giving one heatmap per landmark (method.md §5.1, §5.3, §6.2).
Presets (`PRESETS`, used by `fkd.models.get_model`):

- `mobilefan`: MobileNetV2 without the 1x1 conv to 1280; 3 x [ConvTranspose 2x2/2, 128, no bias →
  BN → ReLU] (§5.1).
- `efficientfan`: EfficientNet-B0 without the top conv; 3 x [bilinear ×2 → 3x3 conv 128, no bias →
  BN → ReLU] (§6.2 default; `decoder='deconv_k4'` / `'deconv_k2'` are the options).
- `simple_baselines`: ResNet-50 (the `resnet50` backbone when registered); 3 x [ConvTranspose 4x4/2,
  padding 1, 256, no bias → BN → ReLU] (§5.3). Any registered backbone can stand in for it.

Input: float NHWC in [0, 1]; the ImageNet mean/std normalisation (§4.2) happens here, in the first
layer, and nowhere else. `__call__(x, *, train, adapt=False)` returns `(heatmaps, features)`:
heatmaps (B, H/4, W/4, L) for a stride-32 backbone, and features `encoder` (the backbone map),
`decoder_1` … `decoder_3` (post-ReLU, 16², 32², 64² at 256 input: S_i of §5.4, T_i for a teacher)
and, with `adapter_channels` set and `adapt`, `adapted_1` … `adapted_3` (A_i(S_i), §5.2; training
only: the distillation step passes `adapt=True`; inference leaves them out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fkd.models import batch_norm, layers
from fkd.models.backbones import get_backbone
from fkd.models.batch_norm import BatchNorm

Array = jax.Array

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # method.md §4.2
IMAGENET_STD = (0.229, 0.224, 0.225)
DECODERS = ('deconv_k2', 'deconv_k4', 'upsample_conv', 'upsample_nearest_conv')
DECONV_IMPLS = ('auto', 'phases', 'xla')

# method.md §5.1: deconvolution and head kernels ~ N(0, 0.001²); other convs N(0, 2/(k·k·C_out)).
_small = nn.initializers.normal(0.001)
_he_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

PRESETS: dict[str, dict[str, Any]] = {
  # method.md §5.1: MobileNetV2 1.0 trunk without the 1280 conv, PyTorch BN (momentum 0.1 ->
  # Flax 0.9, ε 1e-5; §8), decoder k2 s2 deconvolutions with 128 filters.
  'mobilefan': dict(
    backbone='mobilenet_v2',
    backbone_kwargs=dict(include_last_conv=False, bn_momentum=0.9, bn_epsilon=1e-5),
    decoder='deconv_k2',
    decoder_channels=128,
  ),
  # method.md §6.2 (default, §9 #13): EfficientNet-B0 without the 1280 conv, bilinear ×2 + 3x3
  # conv with 128 filters.
  'efficientfan': dict(
    backbone='efficientnet_b0',
    backbone_kwargs=dict(include_top_conv=False),
    decoder='upsample_conv',
    decoder_channels=128,
  ),
  # method.md §5.3: ResNet-50 + 3 x ConvTranspose 4x4/2 (padding 1), 256 filters.
  'simple_baselines': dict(
    backbone='resnet50', backbone_kwargs={}, decoder='deconv_k4', decoder_channels=256
  ),
}


def _phase_kernel(kernel: Array, k: int) -> Array:
  """A 3x3 conv kernel (3, 3, Cin, 4·Cout) whose output channels are the 2x2 output phases.

  PyTorch semantics (out = 2·in − p + t): with W[t] the PyTorch-oriented tap, output 2m + a of a
  k2/p0 deconvolution is x[m]·W[a]; of a k4/p1 one, x[m]·W[1] + x[m−1]·W[3] (a = 0) and
  x[m]·W[2] + x[m+1]·W[0] (a = 1). Flax's layouts: k2 VALID stores W flipped as (k, k, Cin, Cout),
  k4 with `transpose_kernel` stores W unflipped as (k, k, Cout, Cin) (checked in tests).
  """
  if k == 2:
    w = kernel[::-1, ::-1]
    taps = {0: [(0, 0)], 1: [(0, 1)]}  # phase -> [(input offset, tap)]
  else:
    w = jnp.swapaxes(kernel, 2, 3)
    taps = {0: [(0, 1), (-1, 3)], 1: [(0, 2), (1, 0)]}
  cin, cout = w.shape[2:]
  out = jnp.zeros((3, 3, cin, 2, 2, cout), w.dtype)
  for a in (0, 1):
    for b in (0, 1):
      for dh, th in taps[a]:
        for dw, tw in taps[b]:
          out = out.at[dh + 1, dw + 1, :, a, b].set(w[th, tw])
  return out.reshape(3, 3, cin, 4 * cout)


class Adapter(nn.Module):
  """1x1 conv (no bias) -> BN -> ReLU, lifting a student feature to the teacher's channels.

  Initialisation N(0, 2/(k·k·C_out)) (method.md §5.1, "every other conv"); BN as PyTorch
  (momentum 0.9 in Flax terms, ε 1e-5; §8). With `plain=True`, a 1x1 conv with bias only
  (EfficientFAN's encoder option, §6.4).
  """

  features: int
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  plain: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
    x = nn.Conv(self.features, (1, 1), use_bias=self.plain, kernel_init=init, name='conv')(x)
    if self.plain:
      return x
    # flax's BatchNorm, unless the batch carries per-example weights: then fkd's, whose weighted
    # statistics `nn.BatchNorm` lacks (the same variables).
    norm = nn.BatchNorm if batch_norm.current_weights() is None or not train else BatchNorm
    x = norm(
      use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon, name='bn'
    )(x)
    return nn.relu(x)


class Deconv2x(nn.Module):
  """×2 transposed convolution, PyTorch k2/p0 or k4/p1, without bias; `nn.ConvTranspose` params.

  XLA:CPU runs transposed convolutions several times slower than a plain convolution of the same
  FLOPs (README, "Speed on CPU"), so on CPU ('auto' / 'phases') the four output phases are
  computed by one 3x3 conv to 4·Cout channels and interleaved; 'xla' is `lax.conv_transpose`, as
  `nn.ConvTranspose` (also what 'auto' takes inside `layers.portable_ops`, for export).
  """

  features: int
  kernel_size: int = 2
  impl: str = 'auto'
  kernel_init: Any = _small
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, cin = self.kernel_size, x.shape[-1]
    if k not in (2, 4):
      raise ValueError(f'Deconv2x supports kernels 2 and 4, got {k}')
    shape = (k, k, cin, self.features) if k == 2 else (k, k, self.features, cin)
    kernel = self.param('kernel', self.kernel_init, shape, jnp.float32)
    if self.dtype is not None:
      x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    impl = layers.resolve_impl(self.impl, DECONV_IMPLS, 'deconvolution', 'phases', 'xla')
    dn = ('NHWC', 'HWIO', 'NHWC')
    if impl == 'xla':
      padding = 'VALID' if k == 2 else ((2, 2), (2, 2))
      return jax.lax.conv_transpose(
        x, kernel, (2, 2), padding, dimension_numbers=dn, transpose_kernel=k == 4
      )
    b, h, w, _ = x.shape
    if k == 2:  # no neighbours involved: a 1x1 conv (one dot) is enough
      y = jnp.einsum('bhwc,cd->bhwd', x, _phase_kernel(kernel, k)[1, 1])
    else:
      y = jax.lax.conv_general_dilated(
        x, _phase_kernel(kernel, k), (1, 1), 'SAME', dimension_numbers=dn
      )
    y = y.reshape(b, h, w, 2, 2, self.features)
    return y.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, self.features)


def _last_map(features: Mapping[str, Array]) -> str:
  """The name of the last 4-D (spatial) feature map a backbone returns."""
  names = [k for k, v in features.items() if getattr(v, 'ndim', 0) == 4]
  if not names:
    raise ValueError(f'backbone returned no spatial feature map (features: {list(features)})')
  return names[-1]


class HeatmapNet(nn.Module):
  """Encoder–decoder heatmap regressor (see the module docstring).

  Attributes:
    num_landmarks: L, the number of heatmaps.
    backbone: a name of `fkd.models.backbones`; it is built with `num_outputs=None`.
    backbone_kwargs: fields of the backbone module.
    feature: which backbone feature feeds the decoder; '' = its last spatial map.
    decoder: 'deconv_k2' (MobileFAN), 'deconv_k4' (Simple Baselines, EfficientFAN conference),
      'upsample_conv' (bilinear ×2 + 3x3 conv; EfficientFAN journal) or 'upsample_nearest_conv'.
    decoder_channels: filters of every decoder stage (128 students, 256 teacher).
    num_stages: decoder stages, each ×2 (3 in every paper).
    adapter_channels: () or one channel count per decoder stage: adds the 1x1 conv → BN → ReLU
      adapters of feature-aligned distillation (method.md §5.2), applied when `adapt`.
    share_adapter_23: MobileFAN's official quirk, stage 3 reuses adapter 2 (§5.2, §9 #11).
    normalize_input: ImageNet mean/std inside the model (§4.2).
    bn_momentum, bn_epsilon: decoder and adapter BatchNorm (PyTorch: 0.9, 1e-5).
    deconv_impl: Deconv2x implementation, 'auto' | 'phases' | 'xla'.
  """

  num_landmarks: int
  backbone: str = 'mobilenet_v2'
  backbone_kwargs: Mapping[str, Any] | None = None
  feature: str = ''
  decoder: str = 'deconv_k2'
  decoder_channels: int = 128
  num_stages: int = 3
  adapter_channels: Sequence[int] = ()
  share_adapter_23: bool = False
  normalize_input: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  deconv_impl: str = 'auto'
  dtype: Any = None

  def _upsample(self, x: Array, i: int) -> Array:
    c = self.decoder_channels
    if self.decoder in ('deconv_k2', 'deconv_k4'):
      # PyTorch ConvTranspose2d k2/p0 or k4/p1 (method.md §8): exactly 2H.
      return Deconv2x(
        c,
        2 if self.decoder == 'deconv_k2' else 4,
        self.deconv_impl,
        dtype=self.dtype,
        name=f'deconv_{i}',
      )(x)
    if self.decoder in ('upsample_conv', 'upsample_nearest_conv'):
      b, h, w, ch = x.shape
      method = 'bilinear' if self.decoder == 'upsample_conv' else 'nearest'
      x = jax.image.resize(x, (b, 2 * h, 2 * w, ch), method)
      return nn.Conv(
        c,
        (3, 3),
        padding='SAME',
        use_bias=False,
        kernel_init=_he_out,
        dtype=self.dtype,
        name=f'conv_{i}',
      )(x)
    raise ValueError(f'decoder must be one of {DECODERS}, got {self.decoder!r}')

  @nn.compact
  def __call__(
    self, x: Array, *, train: bool, adapt: bool = False
  ) -> tuple[Array, dict[str, Array]]:
    if self.normalize_input:
      x = (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)
    backbone_kwargs = dict(self.backbone_kwargs or {})
    if self.dtype is not None:  # the encoder computes in the network's dtype unless it says
      backbone_kwargs.setdefault('dtype', self.dtype)
    trunk = get_backbone(self.backbone, num_outputs=None, **backbone_kwargs, name='backbone')
    _, feats = trunk(x, train=train)
    x = feats[self.feature or _last_map(feats)]
    features = {'encoder': x}
    for i in range(1, self.num_stages + 1):
      x = self._upsample(x, i)
      x = features[f'decoder_{i}'] = BatchNorm(
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        activation=nn.relu,
        dtype=self.dtype,
        name=f'decoder_bn_{i}',
      )(x)
    heatmaps = nn.Conv(
      self.num_landmarks, (1, 1), kernel_init=_small, dtype=self.dtype, name='head'
    )(x)
    if self.adapter_channels and adapt:
      if len(self.adapter_channels) != self.num_stages:
        raise ValueError(
          f'adapter_channels needs {self.num_stages} entries, got {self.adapter_channels}'
        )
      adapters = {}
      for i, c in enumerate(self.adapter_channels, start=1):
        key = 2 if (self.share_adapter_23 and i == 3) else i
        if key not in adapters:
          adapters[key] = Adapter(c, self.bn_momentum, self.bn_epsilon, name=f'adapter_{key}')
        features[f'adapted_{i}'] = adapters[key](features[f'decoder_{i}'], train=train)
    return heatmaps.astype(jnp.float32), features
