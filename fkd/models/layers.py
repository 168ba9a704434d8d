"""Convolution layers that are fast on XLA:CPU and checkpoint-compatible with `nn.Conv`.

XLA:CPU runs grouped (depthwise) convolutions very slowly, forward and backward. On CPU the
depthwise convolution is therefore written as k·k shifted, strided slices multiplied by per-channel
weights, and 1x1 convolutions as one 2-D `dot_general` (see docs/cpu-speed.md). Parameters keep the
`nn.Conv` layout, so checkpoints move freely between implementations and backends.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fkd.models import native

Array = jax.Array
Dtype = Any
Initializer = nn.initializers.Initializer

DEPTHWISE_IMPLS = ('auto', 'native', 'shifted', 'shifted_autodiff', 'grouped')


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
  """Rounds `v` to a multiple of `divisor`, never below 90 % of `v` (Keras/TF rule)."""
  min_value = divisor if min_value is None else min_value
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return int(new_v)


def same_padding(size: Sequence[int], kernel_size: int, strides: int) -> list[tuple[int, int]]:
  """TensorFlow 'SAME' padding, asymmetric (more at the end) when the total is odd."""
  return lax.padtype_to_pads(
    tuple(size), (kernel_size,) * len(size), (strides,) * len(size), 'SAME'
  )


def normalize_input(x: Array, mean: Sequence[float] | None, std: Sequence[float] | None) -> Array:
  """Per-channel `(x - mean) / std` on NHWC input in [0, 1]; identity when both are None.

  This is where a backbone imported from ImageNet weights applies its source's preprocessing
  (recorded by `fkd.tools.import_weights` in the checkpoint meta), so the rest of fkd always feeds
  pixel/255.
  """
  if mean is None and std is None:
    return x
  mean = jnp.asarray(0.0 if mean is None else tuple(mean), x.dtype)
  std = jnp.asarray(1.0 if std is None else tuple(std), x.dtype)
  return (x - mean) / std


_PORTABLE = contextvars.ContextVar('fkd_portable_ops', default=False)


@contextlib.contextmanager
def portable_ops():
  """Inside, models trace to the standard ops whatever the backend: 'auto' depthwise convolutions
  as grouped convolutions and `Conv1x1` as a 1x1 convolution. For export: TFLite and other
  runtimes map them to their native CONV_2D / DEPTHWISE_CONV_2D kernels (the CPU-fast forms are
  XLA:CPU workarounds). Same maths, tested equal."""
  token = _PORTABLE.set(True)
  try:
    yield
  finally:
    _PORTABLE.reset(token)


_TARGET = contextvars.ContextVar('fkd_target_platform', default=None)
PLATFORMS = ('cpu', 'cuda', 'rocm', 'gpu', 'tpu')


@contextlib.contextmanager
def target_platform(platform: str):
  """Inside, every 'auto' choice (layer formulations, BatchNorm sums, native kernels, the frozen
  teachers' chunking) resolves as it would on `platform` ('cpu' | 'cuda' | 'rocm' | 'gpu' |
  'tpu'), whatever backend this process runs on: how the accelerator programs are traced, and
  so lowered and checked, on a CPU-only machine (`benchmarks/accelerator.py`)."""
  if platform not in PLATFORMS:
    raise ValueError(f'Unknown platform {platform!r}; expected one of {PLATFORMS}.')
  token = _TARGET.set(platform)
  try:
    yield
  finally:
    _TARGET.reset(token)


def current_platform() -> str:
  """The platform 'auto' resolves for: `target_platform`'s, else `jax.default_backend()`."""
  return _TARGET.get() or jax.default_backend()


def cpu_formulation() -> bool:
  """Whether 'auto' takes the CPU-fast formulations: on CPU, outside `portable_ops`."""
  return current_platform() == 'cpu' and not _PORTABLE.get()


def resolve_impl(impl: str, impls: Sequence[str], what: str, cpu: str, other: str) -> str:
  """Checks `impl` is one of `impls`; maps 'auto' to `cpu` on CPU outside `portable_ops`, else
  to `other` (the standard formulation). "On CPU" follows `target_platform` when set."""
  if impl not in impls:
    raise ValueError(f'Unknown {what} impl {impl!r}; expected one of {tuple(impls)}.')
  if impl == 'auto':
    return cpu if cpu_formulation() else other
  return impl


def resolve_depthwise_impl(impl: str) -> str:
  """Maps 'auto' to 'grouped' off CPU (and inside `portable_ops`); on CPU to 'native' when the
  native kernels are available (`fkd.models.native`; not with `FKD_NATIVE=0`) and there is one
  device, else to 'shifted'.

  With several (forced) CPU devices 'shifted' keeps a batch-sharded step local: the native custom
  call would gather the batch."""
  resolved = resolve_impl(impl, DEPTHWISE_IMPLS, 'depthwise', 'native', 'grouped')
  if resolved == 'native' and impl == 'auto':
    if not native.enabled() or jax.device_count() > 1 or not native.available():
      return 'shifted'
  return resolved


def _shift_slices(xp: Array, kh: int, kw: int, strides: int, out_hw: tuple[int, int]):
  """Yields (i, j, strided window of padded `xp` aligned with output position)."""
  b, _, _, c = xp.shape
  oh, ow = out_hw
  for i in range(kh):
    for j in range(kw):
      yield (
        i,
        j,
        lax.slice(
          xp,
          (0, i, j, 0),
          (b, i + (oh - 1) * strides + 1, j + (ow - 1) * strides + 1, c),
          (1, strides, strides, 1),
        ),
      )


def _out_hw(xp_shape, kh: int, kw: int, strides: int) -> tuple[int, int]:
  return (xp_shape[1] - kh) // strides + 1, (xp_shape[2] - kw) // strides + 1


def _pad(x: Array, pads) -> Array:
  return jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))


def depthwise_conv_shifted_autodiff(x: Array, kernel: Array, strides: int, pads) -> Array:
  """Depthwise conv as a sum of k·k shifted strided slices × per-channel weights."""
  kh, kw = kernel.shape[:2]
  xp = _pad(x, pads)
  out_hw = _out_hw(xp.shape, kh, kw, strides)
  y = None
  for i, j, window in _shift_slices(xp, kh, kw, strides, out_hw):
    term = window * kernel[i, j, 0]
    y = term if y is None else y + term
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv_shifted(x: Array, kernel: Array, strides: int, pads) -> Array:
  """As `depthwise_conv_shifted_autodiff`, with a hand-written, CPU-friendly backward pass.

  Kernel gradient: accumulated image by image with `lax.scan`, one reduction per tap, so each
  step works on one image (cache-resident) instead of streaming the whole batch k·k times (one
  image per device and step when the batch divides `jax.device_count()`, so a batch-sharded step
  stays local).
  Input gradient: at stride 1 a shifted correlation of the cotangent with the flipped kernel,
  otherwise `depthwise_input_grad_polyphase`.
  """
  return depthwise_conv_shifted_autodiff(x, kernel, strides, pads)


def _dw_fwd(x, kernel, strides, pads):
  return depthwise_conv_shifted_autodiff(x, kernel, strides, pads), (x, kernel)


def depthwise_input_grad_polyphase(
  g: Array, kernel: Array, strides: int, pads, in_hw: tuple[int, int]
) -> Array:
  """Input gradient of a strided depthwise conv, phase by phase.

  Input pixel (s·m + p, s·n + q) receives only the taps i ≡ p + pad_top, j ≡ q + pad_left
  (mod s), each from cotangent (m + (p + pad_top − i)/s, n + (q + pad_left − j)/s). Each of the
  s² phases is a sum of those shifted cotangent windows × weights; the phases are interleaved
  back. At stride 2 and k = 3 that is 9 multiply-adds per 4 input pixels, where autodiff of the
  strided slices evaluates all 9 padded taps at every pixel (and XLA:CPU recomputes the fused
  cotangent producer 9 times).
  """
  kh, kw = kernel.shape[:2]
  s = strides
  b, oh, ow, c = g.shape
  h, w = in_hw
  mh, mw = -(-h // s), -(-w // s)

  def taps(k: int, pad_lo: int, phase: int) -> list[tuple[int, int]]:
    return [(i, (phase + pad_lo - i) // s) for i in range(k) if (phase + pad_lo - i) % s == 0]

  rows = [taps(kh, pads[0][0], p) for p in range(s)]
  cols = [taps(kw, pads[1][0], p) for p in range(s)]
  d_h = [d for r in rows for _, d in r]
  d_w = [d for r in cols for _, d in r]
  lo_h, lo_w = max(0, -min(d_h)), max(0, -min(d_w))
  hi_h, hi_w = max(0, max(d_h) + mh - oh), max(0, max(d_w) + mw - ow)
  gp = jnp.pad(g, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
  phase_rows = []
  for row_taps in rows:
    phases = []
    for col_taps in cols:
      acc = jnp.zeros((b, mh, mw, c), g.dtype)
      for i, di in row_taps:
        for j, dj in col_taps:
          window = lax.slice(
            gp, (0, lo_h + di, lo_w + dj, 0), (b, lo_h + di + mh, lo_w + dj + mw, c)
          )
          acc = acc + window * kernel[i, j, 0]
      phases.append(acc)
    phase_rows.append(jnp.stack(phases, axis=3))  # (b, mh, mw, s, c)
  full = jnp.stack(phase_rows, axis=2).reshape(b, mh * s, mw * s, c)
  return full[:, :h, :w]


def _depthwise_input_grad(g: Array, kernel: Array, strides: int, pads, in_hw) -> Array:
  kh, kw = kernel.shape[:2]
  if strides == 1:
    (pt, pb), (pl, pr) = pads
    g_pads = ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr))
    return depthwise_conv_shifted_autodiff(g, kernel[::-1, ::-1], 1, g_pads)
  return depthwise_input_grad_polyphase(g, kernel, strides, pads, in_hw)


def depthwise_kernel_grad_scan(x: Array, g: Array, kernel_shape, strides: int, pads) -> Array:
  """Kernel gradient (k, k, 1, C) image by image with `lax.scan`, one reduction per tap."""
  kh, kw = kernel_shape[:2]
  # Scan over the images of each device's shard: with a batch-sharded `x` (data parallelism)
  # the (devices, batch / devices) split keeps every step local; partial sums are added last.
  b, c = x.shape[0], x.shape[-1]
  d = jax.device_count() if b % jax.device_count() == 0 else 1
  to_steps = lambda a: jnp.swapaxes(a.reshape(d, b // d, *a.shape[1:]), 0, 1)
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)

  def per_step(acc, xg):
    xi, gi = xg  # (d, H, W, C) and (d, OH, OW, C): one image per shard.
    xp = _pad(xi, pads)
    out_hw = _out_hw(xp.shape, kh, kw, strides)
    taps = [
      jnp.sum(w * gi, axis=(1, 2), dtype=acc_dtype)
      for _, _, w in _shift_slices(xp, kh, kw, strides, out_hw)
    ]
    return acc + jnp.stack(taps, axis=1), None

  dk, _ = lax.scan(per_step, jnp.zeros((d, kh * kw, c), acc_dtype), (to_steps(x), to_steps(g)))
  return dk.sum(0).reshape(kernel_shape)


def _dw_bwd(strides, pads, res, g):
  x, kernel = res
  dx = _depthwise_input_grad(g, kernel, strides, pads, x.shape[1:3])
  dk = depthwise_kernel_grad_scan(x, g, kernel.shape, strides, pads)
  return dx, dk.astype(kernel.dtype)


depthwise_conv_shifted.defvjp(_dw_fwd, _dw_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv_native(x: Array, kernel: Array, strides: int, pads) -> Array:
  """Depthwise conv whose forward pass, input gradient and kernel gradient are the native XLA:CPU
  kernels of `fkd.models.native` (float32; other dtypes, or no native kernels, take the
  `depthwise_conv_shifted` formulation). CPU only."""
  if not _native_ok(x, kernel):
    return depthwise_conv_shifted_autodiff(x, kernel, strides, pads)
  kh, kw = kernel.shape[:2]
  out_hw = _out_hw(_padded_shape(x.shape, pads), kh, kw, strides)
  return native.depthwise_forward(x, kernel, strides, pads, out_hw)


def _padded_shape(shape, pads) -> tuple[int, ...]:
  return (shape[0], shape[1] + sum(pads[0]), shape[2] + sum(pads[1]), shape[3])


def _native_ok(*arrays: Array) -> bool:
  return all(a.dtype == jnp.float32 for a in arrays) and native.available()


def _dw_native_fwd(x, kernel, strides, pads):
  return depthwise_conv_native(x, kernel, strides, pads), (x, kernel)


def _dw_native_bwd(strides, pads, res, g):
  x, kernel = res
  if not _native_ok(x, kernel, g):
    return _dw_bwd(strides, pads, res, g)
  dx = native.depthwise_input_grad(g, kernel, strides, pads, x.shape[1:3])
  dk = native.depthwise_kernel_grad(x, g, kernel.shape, strides, pads)
  return dx, dk


depthwise_conv_native.defvjp(_dw_native_fwd, _dw_native_bwd)


def depthwise_conv_grouped(x: Array, kernel: Array, strides: int, pads) -> Array:
  """Depthwise conv as a grouped `lax.conv_general_dilated` (native on GPU/TPU)."""
  return lax.conv_general_dilated(
    x,
    kernel,
    (strides, strides),
    [tuple(p) for p in pads],
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    feature_group_count=x.shape[-1],
  )


_DEPTHWISE_FNS = {
  'native': depthwise_conv_native,
  'shifted': depthwise_conv_shifted,
  'shifted_autodiff': depthwise_conv_shifted_autodiff,
  'grouped': depthwise_conv_grouped,
}


def conv_padding(
  padding: str, size: Sequence[int], kernel_size: int, strides: int
) -> list[tuple[int, int]]:
  """'same' = TF/Keras (asymmetric when odd), 'symmetric' = PyTorch's `k // 2` on every side."""
  if padding == 'same':
    return same_padding(size, kernel_size, strides)
  if padding == 'symmetric':
    return [(kernel_size // 2, kernel_size // 2)] * len(size)
  raise ValueError(f"padding must be 'same' or 'symmetric', got {padding!r}")


class DepthwiseConv(nn.Module):
  """k×k depthwise convolution (depth multiplier 1), TF 'SAME' or PyTorch symmetric padding.

  Params `kernel` (k, k, 1, C) and optional `bias` (C,), as `nn.Conv(features=C,
  feature_group_count=C)`. `impl`: 'grouped' (lax grouped conv), 'shifted' (k·k shifted
  multiply-adds with a custom-VJP kernel gradient), 'native' (forward, input and kernel gradient
  from the C++ CPU kernels of `fkd.models.native`), 'shifted_autodiff' (plain autodiff) or 'auto'
  ('native' on one CPU device with the native kernels, else 'shifted'; 'grouped' off CPU).
  `padding`: 'same' | 'symmetric'.

  `swish_bias` (C,): the inference form of depthwise conv → folded BatchNorm → swish (`__call__`
  returns `(swish(conv(x) + swish_bias), channel means (B, C))`, the means being what
  squeeze-and-excitation pools); `input_swish_bias` (C,) with it: the input is first taken as
  swish(x + input_swish_bias) (the folded BatchNorm + swish of an expansion before). With 'native'
  one C++ pass does all of it, activating each input row once and writing the output and its
  sums; otherwise the same ops in XLA. Not differentiable on the native path (frozen models only).
  """

  kernel_size: int = 3
  strides: int = 1
  use_bias: bool = False
  impl: str = 'auto'
  padding: str = 'same'
  kernel_init: Initializer = nn.linear.default_kernel_init
  bias_init: Initializer = nn.initializers.zeros_init()
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
    self, x: Array, swish_bias: Array | None = None, input_swish_bias: Array | None = None
  ) -> Array | tuple[Array, Array]:
    c, k = x.shape[-1], self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, 1, c), self.param_dtype)
    bias = self.param('bias', self.bias_init, (c,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    pads = tuple(tuple(p) for p in conv_padding(self.padding, x.shape[1:3], k, self.strides))
    impl = resolve_depthwise_impl(self.impl)
    if swish_bias is not None:
      swish_bias = swish_bias.astype(x.dtype) if bias is None else swish_bias + bias
      if impl == 'native' and _native_ok(x, kernel, swish_bias):
        out_hw = _out_hw(_padded_shape(x.shape, pads), k, k, self.strides)
        y, row_sums = native.depthwise_bias_swish(
          x, kernel, swish_bias, self.strides, pads, out_hw, input_swish_bias
        )
        return y, jnp.sum(row_sums, axis=1) / (out_hw[0] * out_hw[1])
      if input_swish_bias is not None:
        x = nn.swish(x + input_swish_bias.astype(x.dtype))
      y = nn.swish(_DEPTHWISE_FNS[impl](x, kernel, self.strides, pads) + swish_bias)
      return y, jnp.mean(y, axis=(1, 2))
    y = _DEPTHWISE_FNS[impl](x, kernel, self.strides, pads)
    return y if bias is None else y + bias


class Conv1x1(nn.Module):
  """1x1 convolution as a 2-D `dot_general` on (B·H·W, Cin) × (Cin, Cout).

  Params `kernel` (1, 1, Cin, Cout) and optional `bias` (Cout,), as `nn.Conv(features, (1, 1))`.
  `input_scale` (B, Cin), if given, multiplies the input per image and channel first (the
  squeeze-and-excitation gate before a projection); on CPU the scale goes into a per-image copy of
  the kernel instead, a batched dot that never writes the scaled input (see `scale_in_kernel`).
  """

  features: int
  use_bias: bool = True
  kernel_init: Initializer = nn.linear.default_kernel_init
  bias_init: Initializer = nn.initializers.zeros_init()
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array, input_scale: Array | None = None) -> Array:
    cin = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (1, 1, cin, self.features), self.param_dtype)
    bias = (
      self.param('bias', self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    x, kernel, bias, input_scale = nn.dtypes.promote_dtype(
      x, kernel, bias, input_scale, dtype=self.dtype
    )
    if input_scale is not None and not scale_in_kernel(x.shape):
      x = x * input_scale.reshape(x.shape[0], *(1,) * (x.ndim - 2), cin)
      input_scale = None
    if input_scale is not None:  # per image: x_b @ (diag(s_b) · W)
      batch = x.shape[0]
      y = lax.dot_general(
        x.reshape(batch, -1, cin),
        input_scale.reshape(batch, cin, 1) * kernel.reshape(1, cin, self.features),
        (((2,), (1,)), ((0,), (0,))),
        precision=self.precision,
      )
      y = y.reshape(*x.shape[:-1], self.features)
    elif _PORTABLE.get() and x.ndim == 4:
      y = lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        'VALID',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        precision=self.precision,
      )
    else:
      y = lax.dot_general(
        x.reshape(-1, cin),
        kernel.reshape(cin, self.features),
        (((1,), (0,)), ((), ())),
        precision=self.precision,
      )
      y = y.reshape(*x.shape[:-1], self.features)
    return y if bias is None else y + bias


# Pixels per image from which `Conv1x1(input_scale=...)` scales the kernel instead of the input:
# on the EfficientNet-B3 shapes the batched dot beats scale-then-dot from 56² up and gains nothing
# below (docs/cpu-speed.md).
SCALE_IN_KERNEL_PIXELS = 56 * 56


def scale_in_kernel(shape: tuple[int, ...]) -> bool:
  """Whether a 1x1 convolution of an input of `shape` (B, ..., Cin) applies its `input_scale`
  inside a per-image kernel (CPU only, not under `portable_ops`; `target_platform` decides)."""
  pixels = math.prod(shape[1:-1])
  return cpu_formulation() and pixels >= SCALE_IN_KERNEL_PIXELS


PointwiseConv = Conv1x1


@jax.custom_jvp
def relu6(x: Array) -> Array:
  """min(max(x, 0), 6), derivative 1 on (0, 6) and 0 elsewhere (one select in the backward pass;
  `jnp.minimum`'s derivative splits ties and costs XLA several extra ops per element)."""
  return jnp.clip(x, 0.0, 6.0)


@relu6.defjvp
def _relu6_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  return relu6(x), jnp.where((x > 0.0) & (x < 6.0), t, jnp.zeros_like(t))
