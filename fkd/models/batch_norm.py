"""BatchNorm (+ activation) whose training pass is one fused custom-VJP op on CPU.

`BatchNorm` has exactly `nn.BatchNorm`'s variables (`params/scale`, `params/bias`,
`batch_stats/mean`, `batch_stats/var`, float32), statistics (fast variance E[x²] − E[x]², biased,
clipped at 0) and running-average update, so checkpoints and `nn.BatchNorm` models interchange.
With `activation` the elementwise activation that follows the normalisation (ReLU6, swish, ReLU)
is part of the op.

Why: in a training step XLA:CPU keeps the normalised tensor, the pre-activation and the
activation mask alive for the backward pass and spends several full passes over memory per layer
(BatchNorm and ReLU6 were a large share of the MobileNetV2 step). The fused op keeps only its
input `x` and per-channel vectors; the backward pass recomputes the pre-activation from `x` and
needs two passes: one for the two channel sums, one for the input gradient:

  forward:  μ, σ² = mean(x), mean(x²) − μ²;  a = γ / √(σ² + ε);  y = act(a·(x − μ) + β)
  backward: g = act'(a·(x − μ) + β) ⊙ ∂y;  Σg, Σg(x − μ) over the batch and space;
            ∂β = Σg;  ∂γ = Σg(x − μ) / √(σ² + ε);
            ∂x = a·(g − Σg/n − (x − μ)·Σg(x − μ) / (n(σ² + ε))) + ∂μ/n + 2∂σ²(x − μ)/n

(∂μ, ∂σ² are the cotangents of the returned batch statistics, zero in a train step.)
Where the native kernels run (`fkd.models.native`: float32, one CPU device, not `FKD_NATIVE=0`)
the channel sums are custom calls: Σx and Σx² in one pass, and Σg, Σg(x − μ) in one pass over ∂y
and x with the activation's derivative recomputed, so g is never written out (XLA:CPU made two
or three passes for each; docs/cpu-speed.md has the train step's gain).
`impl`: 'auto' = 'fused' on CPU and 'plain' elsewhere (GPU/TPU fuse the plain form well);
'plain' is the autodiff formulation, written like flax's. Both are tested equal to
`nn.BatchNorm` + activation in value and gradient.

Per-example weights (`example_weights`, or `BatchNorm(...)(x, weights=w)`): the batch statistics
are the weighted mean and variance over the examples (and space), so examples of weight 0 (the
padding that makes a batch divisible by the device count, `fkd.infra.sharding.pad_batch`) leave
the statistics, the running averages and every gradient as the unpadded batch's
(`batch_norm_train_weighted`, autodiff).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fkd.models import layers, native

Array = jax.Array
Activation = Callable[[Array], Array] | None

BATCH_NORM_IMPLS = ('auto', 'fused', 'plain')


def resolve_impl(impl: str) -> str:
  """Maps 'auto' to 'fused' on CPU and 'plain' elsewhere (and inside `layers.portable_ops`)."""
  return layers.resolve_impl(impl, BATCH_NORM_IMPLS, 'batch-norm', 'fused', 'plain')


def _batch_stats(x32: Array) -> tuple[Array, Array]:
  axes = tuple(range(x32.ndim - 1))
  mean = jnp.mean(x32, axes)
  var = jnp.maximum(jnp.mean(jnp.square(x32), axes) - jnp.square(mean), 0.0)
  return mean, var


# Activations whose derivative the native backward sums recompute, by the kernel's code.
_ACTIVATION_CODES = {
  None: 0,
  jax.nn.relu: 1,
  jax.nn.relu6: 2,
  layers.relu6: 2,  # same derivative: 1 on (0, 6)
  jax.nn.swish: 3,
}


def _native_ok(x: Array, activation: Activation = None) -> bool:
  """Whether the fused op's channel sums run as the native kernels (`fkd.models.native`): float32
  on one CPU device with the kernels on (as the depthwise convolution's 'auto'), a known
  activation. Each is one pass over memory where XLA:CPU makes two (or three, with the
  activation's derivative written out)."""
  return (
    x.dtype == jnp.float32
    and activation in _ACTIVATION_CODES
    and layers.resolve_depthwise_impl('auto') == 'native'
  )


def _apply(activation: Activation, x: Array) -> Array:
  return x if activation is None else activation(x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(
  x: Array, scale: Array, bias: Array, epsilon: float, activation: Activation = None
) -> tuple[Array, Array, Array]:
  """act(batch-normalised x) over all axes but the last, and the batch (mean, var) (float32)."""
  return _fwd(x, scale, bias, epsilon, activation)[0]


def _fwd(x, scale, bias, epsilon, activation):
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  if _native_ok(x32, activation):
    sums = native.batch_sums(x32) / (x32.size // x32.shape[-1])
    mean, var = sums[0], jnp.maximum(sums[1] - jnp.square(sums[0]), 0.0)
  else:
    mean, var = _batch_stats(x32)
  inv = lax.rsqrt(var + epsilon)
  a = scale.astype(x32.dtype) * inv
  b = bias.astype(x32.dtype)
  y = _apply(activation, (x32 - mean) * a + b).astype(x.dtype)  # centred first: no cancellation
  return (y, mean, var), (x, mean, inv, a, b, scale, bias)


def _bwd(epsilon, activation, res, cts):
  x, mean, inv, a, b, scale, bias = res
  dy, dmean, dvar = cts
  n = x.size // x.shape[-1]
  axes = tuple(range(x.ndim - 1))
  x32 = x.astype(a.dtype)
  g = dy.astype(a.dtype)
  centred = x32 - mean
  native_sums = _native_ok(x32, activation) and g.dtype == jnp.float32
  if native_sums:  # from dy and x in one pass; g below only feeds the input gradient's pass
    sum_g, sum_gx = native.batch_norm_grad_sums(g, x32, mean, a, b, _ACTIVATION_CODES[activation])
  if activation is not None:
    _, act_vjp = jax.vjp(activation, centred * a + b)
    (g,) = act_vjp(g)
  if not native_sums:
    sum_g = jnp.sum(g, axes)
    sum_gx = jnp.sum(g * centred, axes)
  dx = a * g - (a * sum_g - dmean) / n - centred * (a * inv * inv * sum_gx - 2.0 * dvar) / n
  return (dx.astype(x.dtype), (sum_gx * inv).astype(scale.dtype), sum_g.astype(bias.dtype))


batch_norm_train.defvjp(_fwd, _bwd)


def batch_norm_train_plain(
  x: Array, scale: Array, bias: Array, epsilon: float, activation: Activation = None
) -> tuple[Array, Array, Array]:
  """`batch_norm_train` by autodiff, computed as `nn.BatchNorm` does."""
  mean, var = _batch_stats(x.astype(jnp.promote_types(x.dtype, jnp.float32)))
  y = (x - mean.astype(x.dtype)) * (lax.rsqrt(var + epsilon) * scale).astype(x.dtype)
  return _apply(activation, y + bias.astype(x.dtype)), mean, var


def batch_norm_train_weighted(
  x: Array, scale: Array, bias: Array, epsilon: float, activation: Activation, weights: Array
) -> tuple[Array, Array, Array]:
  """`batch_norm_train_plain` with the statistics weighted per example: `weights` (B,) >= 0, the
  mean and variance over the examples of weight > 0 (weights 0/1) or their weighted average."""
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  axes = tuple(range(x32.ndim - 1))
  w = weights.astype(jnp.float32).reshape(-1, *(1,) * (x32.ndim - 1))
  n = jnp.sum(weights.astype(jnp.float32)) * (x32[0].size // x32.shape[-1])
  mean = jnp.sum(w * x32, axes) / n
  var = jnp.maximum(jnp.sum(w * jnp.square(x32), axes) / n - jnp.square(mean), 0.0)
  y = (x - mean.astype(x.dtype)) * (lax.rsqrt(var + epsilon) * scale).astype(x.dtype)
  return _apply(activation, y + bias.astype(x.dtype)), mean, var


_WEIGHTS = contextvars.ContextVar('fkd_example_weights', default=None)


@contextlib.contextmanager
def example_weights(weights: Array | None):
  """Inside, every `BatchNorm` in training mode weights its batch statistics by `weights` (B,)
  (None: unweighted). How a train step with padded examples reaches the BatchNorms of any
  model without threading a mask through every module."""
  token = _WEIGHTS.set(weights)
  try:
    yield
  finally:
    _WEIGHTS.reset(token)


def current_weights() -> Array | None:
  """The per-example weights of `example_weights`, or None."""
  return _WEIGHTS.get()


class BatchNorm(nn.Module):
  """`nn.BatchNorm` over the last axis (+ `activation`), fused on CPU; see the module docstring.

  Attributes as `nn.BatchNorm` (`use_running_average`, `momentum`, `epsilon`, `dtype`,
  `param_dtype`), plus `activation` (elementwise, or None) and `impl` ('auto' | 'fused' |
  'plain'). No cross-device `axis_name`: under `jit` with a sharded batch the statistics are
  global already.

  `weights` (B,) (call argument, else `example_weights`'s): per-example weights of the batch
  statistics in training mode (`batch_norm_train_weighted`).

  `folded=True` is the inference form after `fkd.models.fold.fold_batch_norm` has moved the
  normalisation into the preceding convolution's kernel: only `params/bias` remains and the op is
  `activation(x + bias)` (no statistics, no training mode).
  """

  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  activation: Activation = None
  impl: str = 'auto'
  folded: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, x: Array, use_running_average: bool | None = None, weights: Array | None = None
  ) -> Array:
    use_running_average = nn.merge_param(
      'use_running_average', self.use_running_average, use_running_average
    )
    c = x.shape[-1]
    if self.folded:
      if not use_running_average:
        raise ValueError('a folded BatchNorm is inference only (train=False)')
      bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
      dtype = self.dtype or jnp.result_type(x, bias)
      return _apply(self.activation, jnp.asarray(x, dtype) + bias.astype(dtype))
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), (c,))
    scale = self.param('scale', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, scale)
    x = jnp.asarray(x, dtype)
    if use_running_average:
      y = (x - ra_mean.value.astype(dtype)) * (
        lax.rsqrt(ra_var.value + self.epsilon) * scale
      ).astype(dtype)
      return _apply(self.activation, y + bias.astype(dtype))
    weights = current_weights() if weights is None else weights
    if weights is not None:
      y, mean, var = batch_norm_train_weighted(
        x, scale, bias, self.epsilon, self.activation, weights
      )
    else:
      fused = resolve_impl(self.impl) == 'fused'
      train_fn = batch_norm_train if fused else batch_norm_train_plain
      y, mean, var = train_fn(x, scale, bias, self.epsilon, self.activation)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


class FoldedBias(nn.Module):
  """The variables of a folded `BatchNorm` (`params/bias`, (C,)), for a layer that applies
  `activation(x + bias)` itself (`layers.DepthwiseConv(swish_bias=...)`)."""

  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, channels: int) -> Array:
    return self.param('bias', nn.initializers.zeros, (channels,), self.param_dtype)


def factory(
  train: bool, momentum: float, epsilon: float, dtype: Any = None, folded: bool = False
) -> Callable[..., BatchNorm]:
  """`bn(name, activation=None)` for a model's compact method: its BatchNorms, in training or
  inference mode, with the model's momentum, epsilon and dtype (`folded`: the bias-only inference
  form, see `BatchNorm`)."""
  return lambda name, activation=None: BatchNorm(
    use_running_average=not train,
    momentum=momentum,
    epsilon=epsilon,
    activation=activation,
    folded=folded,
    dtype=dtype,
    name=name,
  )
