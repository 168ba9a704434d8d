"""fkd.models.batch_norm: the fused CPU BatchNorm(+activation) equals nn.BatchNorm + activation."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkd.models import batch_norm, layers
from fkd.models.mobilenet_v2 import MobileNetV2, relu6

ACTIVATIONS = {'none': None, 'relu6': relu6, 'swish': nn.swish, 'relu': nn.relu}
TRAIN_FNS = {'fused': batch_norm.batch_norm_train, 'plain': batch_norm.batch_norm_train_plain}


def test_batch_norm_by_hand():
  # Channel 0: values 1, 3, 5, 7 -> mean 4, biased var 5; channel 1: 2, 2, 2, 6 -> mean 3, var 3.
  x = jnp.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0], [7.0, 6.0]]).reshape(4, 1, 1, 2)
  scale, bias, eps = jnp.array([2.0, 0.5]), jnp.array([1.0, -1.0]), 1e-3
  expected = np.array(
    [
      [2 * (v - 4) / np.sqrt(5 + eps) + 1 for v in (1, 3, 5, 7)],
      [0.5 * (v - 3) / np.sqrt(3 + eps) - 1 for v in (2, 2, 2, 6)],
    ]
  ).T
  for name, fn in TRAIN_FNS.items():
    y, mean, var = fn(x, scale, bias, eps)
    np.testing.assert_allclose(y.reshape(4, 2), expected, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(mean, [4.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(var, [5.0, 3.0], rtol=1e-6)
  # With ReLU6 fused: the negatives become 0 (nothing here exceeds 6).
  y, _, _ = batch_norm.batch_norm_train(x, scale, bias, eps, relu6)
  np.testing.assert_allclose(y.reshape(4, 2), np.clip(expected, 0, 6), rtol=1e-6)


@pytest.mark.parametrize('act', list(ACTIVATIONS))
def test_fused_equals_plain_value_and_gradients_float64(act):
  """Including the cotangents of the returned batch statistics (the custom VJP handles them)."""
  activation = ACTIVATIONS[act]
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(1.0, 2.0, (3, 5, 4, 6)))
    scale, bias = jnp.asarray(rng.uniform(0.5, 2.0, 6)), jnp.asarray(rng.normal(size=6))
    w = jnp.asarray(rng.normal(size=x.shape))
    wm, wv = jnp.asarray(rng.normal(size=6)), jnp.asarray(rng.normal(size=6))

    def loss(fn, x, scale, bias):
      y, mean, var = fn(x, scale, bias, 1e-3, activation)
      return jnp.sum(y * w) + jnp.sum(mean * wm) + jnp.sum(var * wv)

    results = {
      name: jax.value_and_grad(lambda *a, fn=fn: loss(fn, *a), argnums=(0, 1, 2))(x, scale, bias)
      for name, fn in TRAIN_FNS.items()
    }
  (v1, g1), (v2, g2) = results['fused'], results['plain']
  np.testing.assert_allclose(v1, v2, rtol=1e-12)
  for a, b in zip(g1, g2, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def _flax_reference(act):
  activation = ACTIVATIONS[act]

  class Reference(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3)(x)
      return y if activation is None else activation(y)

  return Reference()


@pytest.mark.parametrize('impl', ['fused', 'plain'])
@pytest.mark.parametrize('act', ['relu6', 'swish'])
def test_module_equals_nn_batch_norm(impl, act):
  """Same variables (names, shapes, init), outputs, running statistics and gradients, float32."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(0.5, 2.0, (4, 6, 6, 8)), jnp.float32)
  ours = batch_norm.BatchNorm(momentum=0.9, epsilon=1e-3, activation=ACTIVATIONS[act], impl=impl)
  ref = _flax_reference(act)
  v_ref = ref.init(jax.random.key(0), x, False)
  v_ours = ours.init(jax.random.key(0), x, use_running_average=True)
  unwrapped = {k: v_ref[k]['BatchNorm_0'] for k in ('params', 'batch_stats')}
  assert dict(v_ours).keys() == unwrapped.keys()
  chex.assert_trees_all_equal(dict(v_ours), unwrapped)  # same names, shapes and initial values
  variables = {
    'params': {
      'scale': jnp.asarray(rng.uniform(0.5, 2, 8), jnp.float32),
      'bias': jnp.asarray(rng.normal(size=8), jnp.float32),
    },
    'batch_stats': {
      'mean': jnp.asarray(rng.normal(size=8), jnp.float32),
      'var': jnp.asarray(rng.uniform(0.5, 2, 8), jnp.float32),
    },
  }
  wrap = lambda v: {k: {'BatchNorm_0': v[k]} for k in v}
  w = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def ours_loss(params, x):
    y, mut = ours.apply(
      {**variables, 'params': params}, x, use_running_average=False, mutable=['batch_stats']
    )
    return jnp.sum(y * w), mut['batch_stats']

  def ref_loss(params, x):
    y, mut = ref.apply(wrap({**variables, 'params': params}), x, True, mutable=['batch_stats'])
    return jnp.sum(y * w), mut['batch_stats']['BatchNorm_0']

  (g1, s1) = jax.grad(ours_loss, argnums=(0, 1), has_aux=True)(variables['params'], x)
  (g2, s2) = jax.grad(ref_loss, argnums=(0, 1), has_aux=True)(variables['params'], x)
  for a, b in zip(jax.tree.leaves((g1, s1)), jax.tree.leaves((g2, s2)), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * float(jnp.max(jnp.abs(b))))
  # Inference uses the running statistics, as nn.BatchNorm does.
  np.testing.assert_allclose(
    ours.apply(variables, x, use_running_average=True),
    ref.apply(wrap(variables), x, False),
    rtol=1e-5,
    atol=1e-5,
  )


@pytest.mark.skipif(not batch_norm._native_ok(jnp.zeros(1)), reason='no native kernels here')
@pytest.mark.parametrize('act', list(ACTIVATIONS))
def test_native_sums_equal_xla(monkeypatch, act):
  """The fused op's channel sums from the native kernels (statistics: one pass; backward: Σg and
  Σg(x − μ) with the activation's derivative recomputed) give the XLA form's values and
  gradients, float32."""
  activation = ACTIVATIONS[act]
  rng = np.random.default_rng(2)
  # 490 rows: four blocks of 128 rows over the threads; activations cross 0 and 6
  x = jnp.asarray(rng.normal(1.0, 2.0, (5, 14, 7, 40)), jnp.float32)
  scale = jnp.asarray(rng.uniform(0.5, 2.0, 40), jnp.float32)
  bias = jnp.asarray(rng.normal(size=40), jnp.float32)
  w = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def loss(x, scale, bias):
    y, mean, var = batch_norm.batch_norm_train(x, scale, bias, 1e-3, activation)
    return jnp.sum(y * w) + jnp.sum(mean) + jnp.sum(var), (mean, var)

  run = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
  text = run.lower(x, scale, bias).as_text()
  assert 'fkd_batch_sums' in text and 'fkd_batch_norm_grad_sums' in text
  got = run(x, scale, bias)
  monkeypatch.setattr(batch_norm, '_native_ok', lambda *a: False)
  run_xla = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
  assert 'fkd_batch' not in run_xla.lower(x, scale, bias).as_text()
  want = run_xla(x, scale, bias)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_resolve_impl():
  assert batch_norm.resolve_impl('auto') == ('fused' if jax.default_backend() == 'cpu' else 'plain')
  with layers.portable_ops():
    assert batch_norm.resolve_impl('auto') == 'plain'
  assert batch_norm.resolve_impl('plain') == 'plain'
  with pytest.raises(ValueError, match='batch-norm impl'):
    batch_norm.resolve_impl('cudnn')


def test_relu6_derivative():
  x = jnp.array([-1.0, 0.0, 0.5, 5.9, 6.0, 7.0])
  np.testing.assert_allclose(relu6(x), [0, 0, 0.5, 5.9, 6, 6], rtol=1e-7)
  np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(relu6(v)))(x), [0, 0, 1, 1, 0, 0])


@pytest.mark.slow  # tens of seconds on 2 cores; `pytest -m slow` (CI) runs it
def test_mobilenet_v2_fused_equals_plain_float64():
  """A whole train-mode MobileNetV2 (tiny): gradients and BatchNorm statistics of the CPU fast
  path (fused BatchNorm, shifted depthwise) equal the plain one (`portable_ops`) in float64."""
  model = MobileNetV2(num_outputs=4, width=0.35, depth=0.25)  # 7 blocks, strides 1 and 2
  with jax.enable_x64(True):
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), jnp.float64)
    variables = model.init(jax.random.key(1), x.astype(jnp.float32), train=False)
    variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)

    def loss(params):
      (y, _), mut = model.apply(
        {**variables, 'params': params}, x, train=True, mutable=['batch_stats']
      )
      return jnp.sum(y * jnp.arange(1.0, 5.0)), mut

    fast = jax.grad(loss, has_aux=True)(variables['params'])
    with layers.portable_ops():
      plain = jax.grad(loss, has_aux=True)(variables['params'])
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10 * (1 + float(np.max(np.abs(b)))))
