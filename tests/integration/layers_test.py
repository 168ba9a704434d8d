"""Tests for fkd.models.layers: fast CPU convolutions equal the `nn.Conv` ones."""

import functools
import os
import pathlib
import re
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkd.models import layers, native

REPO = pathlib.Path(__file__).resolve().parents[2]

# (spatial size, stride, kernel): odd and even sizes, stride 1 and 2, kernels 3 and 5.
DW_CASES = [(8, 1, 3), (7, 1, 3), (8, 2, 3), (7, 2, 3), (8, 2, 5), (9, 2, 5), (6, 1, 5), (7, 1, 4)]
# Gradient cases (compiles are the cost): even/odd × stride 1/2 × kernel 3/5, each once, and
# an even kernel (asymmetric padding at stride 1).
DW_GRAD_CASES = [(8, 1, 3), (7, 2, 3), (8, 2, 5), (7, 1, 5), (7, 1, 4)]
FAST_IMPLS = ['native', 'shifted', 'shifted_autodiff']
# The native kernels are built on first use wherever a C++ compiler is found; with one, they must
# build (a silent fallback would leave them untested).
needs_compiler = pytest.mark.skipif(native._compiler() is None, reason='no C++ compiler')


@pytest.mark.parametrize(
  'v, expected',
  [
    (32 * 0.35, 16),
    (24 * 0.35, 8),
    (16, 16),
    (1280 * 1.4, 1792),
    (112 * 1.2, 136),
    (192 * 1.2, 232),
    (1280 * 1.2, 1536),
    (40 * 1.1, 48),
    (3, 8),
  ],
)
def test_make_divisible(v, expected):
  assert layers.make_divisible(v, 8) == expected


def test_same_padding_is_tensorflow():
  assert layers.same_padding((8, 8), 3, 2) == [(0, 1), (0, 1)]
  assert layers.same_padding((7,), 3, 2) == [(1, 1)]
  assert layers.same_padding((8,), 5, 2) == [(1, 2)]
  assert layers.same_padding((8,), 3, 1) == [(1, 1)]


def _cpu_impl() -> str:
  return 'native' if native.enabled() and native.available() else 'shifted'


def test_resolve_depthwise_impl():
  expected = _cpu_impl() if jax.default_backend() == 'cpu' else 'grouped'
  assert layers.resolve_depthwise_impl('auto') == expected
  with pytest.raises(ValueError):
    layers.resolve_depthwise_impl('im2col')


def _depthwise_case(size, stride, k, dtype, use_bias=False):
  """nn.Conv reference, variables, input and output cotangent (numpy-generated: no compiles)."""
  rng = np.random.default_rng(size * 100 + stride * 10 + k)
  x = jnp.asarray(rng.normal(size=(2, size, size, 6)), dtype)
  params = {'kernel': jnp.asarray(rng.normal(size=(k, k, 1, 6)), dtype)}
  if use_bias:
    params['bias'] = jnp.asarray(rng.normal(size=(6,)), dtype)
  ref = nn.Conv(
    6,
    (k, k),
    strides=stride,
    padding='SAME',
    feature_group_count=6,
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=dtype,
  )
  out = -(-size // stride)
  cotangent = jnp.asarray(rng.normal(size=(2, out, out, 6)), dtype)
  return ref, {'params': params}, x, cotangent


def _shapes(module, x):
  return jax.tree.map(jnp.shape, jax.eval_shape(module.init, jax.random.key(0), x))


@functools.partial(jax.jit, static_argnums=0)
def _vjp(module, variables, x, cotangent):
  y, vjp = jax.vjp(lambda v, x_: module.apply(v, x_), variables, x)
  return y, *vjp(cotangent)


@pytest.mark.parametrize('impl', FAST_IMPLS + ['grouped'])
@pytest.mark.parametrize('size, stride, k', DW_CASES)
def test_depthwise_forward_equals_nn_conv(impl, size, stride, k):
  ref, variables, x, _ = _depthwise_case(size, stride, k, jnp.float32, use_bias=True)
  module = layers.DepthwiseConv(k, stride, use_bias=True, impl=impl)
  assert _shapes(module, x) == _shapes(ref, x) == jax.tree.map(jnp.shape, variables)
  np.testing.assert_allclose(
    jax.jit(module.apply)(variables, x), jax.jit(ref.apply)(variables, x), atol=1e-5, rtol=1e-5
  )


@pytest.mark.parametrize('impl', FAST_IMPLS)
@pytest.mark.parametrize('size, stride, k', DW_GRAD_CASES)
def test_depthwise_gradients_float64(impl, size, stride, k):
  with jax.enable_x64(True):
    _, variables, x, g = _depthwise_case(size, stride, k, jnp.float64)
    want = _vjp(layers.DepthwiseConv(k, stride, impl='grouped'), variables, x, g)
    got = _vjp(layers.DepthwiseConv(k, stride, impl=impl), variables, x, g)
    assert got[1]['params']['kernel'].dtype == jnp.float64
    chex.assert_trees_all_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize('impl', FAST_IMPLS)
def test_depthwise_gradients_float32(impl):
  _, variables, x, g = _depthwise_case(10, 2, 3, jnp.float32)
  want = _vjp(layers.DepthwiseConv(3, 2, impl='grouped'), variables, x, g)
  got = _vjp(layers.DepthwiseConv(3, 2, impl=impl), variables, x, g)
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-4)


@needs_compiler
def test_native_kernels_build_and_load():
  assert native.available(), native.status
  assert os.path.dirname(native.status['library']) == native.cache_dir()


# Batch 5, H × (H + 1) images and 45 channels (register blocks of 32, 8 and 1 in the kernels;
# images shared out over threads unevenly); (H, stride, kernel, padding): odd/even sizes, strides
# 1–3, kernels 3/4/5, TF 'same' (asymmetric) and symmetric padding, a kernel wider than the image.
NATIVE_CASES = [
  (9, 1, 3, 'same'),
  (8, 2, 3, 'same'),
  (9, 2, 5, 'same'),
  (7, 1, 4, 'same'),
  (10, 3, 3, 'same'),
  (8, 2, 5, 'symmetric'),
  (3, 1, 5, 'same'),
]


@needs_compiler
@pytest.mark.parametrize('size, stride, k, padding', NATIVE_CASES)
def test_native_depthwise_equals_grouped_float64(size, stride, k, padding):
  """Output, input gradient and kernel gradient of the float32 native kernels against the grouped
  convolution computed in float64 (the native kernels are float32-only)."""
  rng = np.random.default_rng(size * 100 + stride * 10 + k)
  x = rng.normal(size=(5, size, size + 1, 45))  # H != W: top and left padding can differ
  kernel = rng.normal(size=(k, k, 1, 45))
  pads = tuple(tuple(p) for p in layers.conv_padding(padding, x.shape[1:3], k, stride))
  with jax.enable_x64(True):
    y, vjp = jax.vjp(lambda a, b: layers.depthwise_conv_grouped(a, b, stride, pads), x, kernel)
    g = rng.normal(size=y.shape)
    want = (y, *vjp(g))
  f32 = lambda a: jnp.asarray(a, jnp.float32)

  @jax.jit
  def run(a, b, c):
    out, vjp = jax.vjp(lambda a, b: layers.depthwise_conv_native(a, b, stride, pads), a, b)
    return (out, *vjp(c))

  text = run.lower(f32(x), f32(kernel), f32(g)).as_text()
  for target in ('fkd_depthwise_forward', 'fkd_depthwise_input_grad', 'fkd_depthwise_kernel_grad'):
    assert target in text, target
  got = run(f32(x), f32(kernel), f32(g))
  for name, a, b in zip(('output', 'input grad', 'kernel grad'), got, want, strict=True):
    scale = float(np.abs(b).max())
    np.testing.assert_allclose(np.asarray(a, np.float64), b, atol=2e-6 * scale, err_msg=name)


def _swish64(v):
  return v / (1.0 + np.exp(-v))


# The fused inference kernel: the cases above, plus a 20-wide image (four-pixel blocks in the
# interior of each row, single pixels at both edges) in stride 1 and 2.
FUSED_CASES = [*NATIVE_CASES, (20, 1, 3, 'same'), (19, 2, 5, 'same')]


@needs_compiler
@pytest.mark.parametrize('input_swish', [False, True], ids=['plain_input', 'swish_input'])
@pytest.mark.parametrize('size, stride, k, padding', FUSED_CASES)
def test_native_bias_swish_equals_float64(size, stride, k, padding, input_swish):
  """`native.depthwise_bias_swish`: swish(conv(x') + b) and its row sums, x' = swish(x + b_in) or
  x, against numpy's swish around the grouped convolution in float64."""
  assert native.available(), native.status
  rng = np.random.default_rng(size * 100 + stride * 10 + k + input_swish)
  x = rng.normal(size=(5, size, size + 1, 45))
  kernel = rng.normal(size=(k, k, 1, 45)) / k
  bias, in_bias = rng.normal(size=(2, 45))
  pads = tuple(tuple(p) for p in layers.conv_padding(padding, x.shape[1:3], k, stride))
  with jax.enable_x64(True):
    x_in = _swish64(x + in_bias) if input_swish else x
    conv = np.asarray(layers.depthwise_conv_grouped(x_in, kernel, stride, pads))
  want = _swish64(conv + bias)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  run = jax.jit(
    lambda a, b, c, d: native.depthwise_bias_swish(
      a, b, c, stride, pads, want.shape[1:3], d if input_swish else None
    )
  )
  args = f32(x), f32(kernel), f32(bias), f32(in_bias)
  assert 'fkd_depthwise_bias_swish' in run.lower(*args).as_text()
  y, row_sums = run(*args)
  scale = float(np.abs(want).max())
  np.testing.assert_allclose(np.asarray(y, np.float64), want, atol=2e-6 * scale)
  np.testing.assert_allclose(
    np.asarray(row_sums, np.float64), want.sum(axis=2), atol=2e-6 * scale * want.shape[2]
  )


@needs_compiler
@pytest.mark.parametrize('stride', [1, 2])
def test_depthwise_conv_swish_bias_native_equals_xla(stride):
  """`DepthwiseConv(swish_bias=, input_swish_bias=)`: the native kernel and the XLA ops give the
  same activation and channel means (what a folded EfficientNet block feeds its SE gate)."""
  rng = np.random.default_rng(stride)
  x = jnp.asarray(rng.normal(size=(3, 12, 11, 24)), jnp.float32)
  bias, in_bias = jnp.asarray(rng.normal(size=(2, 24)), jnp.float32)
  module = layers.DepthwiseConv(3, stride, impl='native')
  variables = module.init(jax.random.key(0), x)
  got = jax.jit(lambda v: module.apply(v, x, bias, in_bias))(variables)
  want = jax.jit(lambda v: module.clone(impl='grouped').apply(v, x, bias, in_bias))(variables)
  x_in = jax.nn.swish(x + in_bias)
  manual = jax.nn.swish(module.clone(impl='grouped').apply(variables, x_in) + bias)
  np.testing.assert_allclose(want[0], manual, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(want[1], manual.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('pixels_from', [1, 10**9], ids=['scale_in_kernel', 'scale_input'])
def test_conv1x1_input_scale(monkeypatch, pixels_from):
  """`Conv1x1(x, input_scale)` is `Conv1x1(x * scale per image and channel)`, whether the scale goes
  into a per-image kernel (CPU) or onto the input, and under `portable_ops`."""
  monkeypatch.setattr(layers, 'SCALE_IN_KERNEL_PIXELS', pixels_from)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 5, 4, 6)), jnp.float32)
  scale = jnp.asarray(rng.uniform(size=(3, 6)), jnp.float32)
  module = layers.Conv1x1(7)
  variables = module.init(jax.random.key(0), x)
  want = np.einsum('bhwc,bc,cd->bhwd', x, scale, variables['params']['kernel'][0, 0])
  want = want + np.asarray(variables['params']['bias'])
  assert layers.scale_in_kernel(x.shape) == (pixels_from == 1)
  got = jax.jit(lambda v, a, s: module.apply(v, a, s))(variables, x, scale)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with layers.portable_ops():
    assert not layers.scale_in_kernel(x.shape)
    text = jax.jit(lambda v, a, s: module.apply(v, a, s)).lower(variables, x, scale).as_text()
    portable = module.apply(variables, x, scale)
  assert 'convolution' in text
  np.testing.assert_allclose(portable, want, rtol=1e-5, atol=1e-5)


_NATIVE_OFF_SCRIPT = """
import os, jax, numpy as np
from fkd.models import layers, native
assert layers.resolve_depthwise_impl('auto') == 'shifted'
assert not native.available()
print('ERROR', native.status['error'])
x = np.ones((1, 5, 5, 3), np.float32)
k = np.ones((3, 3, 1, 3), np.float32)
y = layers.depthwise_conv_native(x, k, 1, ((1, 1), (1, 1)))  # falls back to the XLA form
assert float(y[0, 2, 2, 0]) == 9.0 and float(y[0, 0, 0, 0]) == 4.0
assert os.listdir(native.cache_dir()) == []  # no half-written library left behind
print('OK')
"""


@pytest.mark.parametrize(
  'env, message',
  [({'FKD_NATIVE': '0'}, 'FKD_NATIVE=0'), ({'CXX': 'false'}, 'false failed')],
  ids=['switched_off', 'compiler_fails'],
)
def test_native_fallback(tmp_path, env, message):
  """FKD_NATIVE=0, or a compiler that fails: 'auto' is the XLA formulation, nothing is cached."""
  cache = tmp_path / 'native'
  cache.mkdir()
  env = dict(
    os.environ,
    **env,
    FKD_NATIVE_CACHE=str(cache),
    PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
  )
  result = subprocess.run(
    [sys.executable, '-c', _NATIVE_OFF_SCRIPT], env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr[-3000:]
  assert message in result.stdout, result.stdout


@pytest.mark.parametrize('use_bias', [False, True])
def test_conv1x1_equals_nn_conv(use_bias):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 4, 6)), jnp.float32)
  params = {'kernel': jnp.asarray(rng.normal(size=(1, 1, 6, 7)), jnp.float32)}
  if use_bias:
    params['bias'] = jnp.asarray(rng.normal(size=(7,)), jnp.float32)
  ref = nn.Conv(7, (1, 1), use_bias=use_bias)
  module = layers.Conv1x1(7, use_bias=use_bias)
  assert _shapes(module, x) == _shapes(ref, x) == jax.tree.map(jnp.shape, {'params': params})
  np.testing.assert_allclose(
    jax.jit(module.apply)({'params': params}, x),
    jax.jit(ref.apply)({'params': params}, x),
    atol=1e-5,
    rtol=1e-5,
  )
  assert layers.PointwiseConv is layers.Conv1x1


def test_layers_dtype():
  x = jnp.ones((1, 6, 6, 4), jnp.float32)
  for module in (
    layers.DepthwiseConv(impl='shifted', dtype=jnp.bfloat16),
    layers.Conv1x1(8, dtype=jnp.bfloat16),
  ):
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    assert jax.tree.leaves(variables)[0].dtype == jnp.float32
    assert jax.eval_shape(module.apply, variables, x).dtype == jnp.bfloat16


_SHARDED_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from fkd.models import layers
assert jax.device_count() == 2
mesh = jax.make_mesh((2,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(4, 6, 6, 5)), jnp.float32)
k = jnp.asarray(rng.normal(size=(3, 3, 1, 5)), jnp.float32)
loss = lambda k, x, impl: jnp.sum(jnp.sin(layers._DEPTHWISE_FNS[impl](x, k, 2, ((0, 1), (0, 1)))))
grad = jax.jit(jax.grad(loss, (0, 1)), static_argnums=2)
want = grad(k, x, 'shifted_autodiff')
xs = jax.device_put(x, NamedSharding(mesh, P('data')))
got = grad(k, xs, 'shifted')
for a, b in zip(got, want):
  np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
assert 'all-gather' not in grad.lower(k, xs, 'shifted').compile().as_text()
print('OK')
"""


def test_depthwise_kernel_gradient_batch_sharded():
  """The custom VJP under a batch-sharded jit: same gradients, and no all-gather of the batch."""
  env = dict(
    os.environ,
    XLA_FLAGS='--xla_force_host_platform_device_count=2',
    PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
  )
  result = subprocess.run(
    [sys.executable, '-c', _SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr[-3000:]


def test_depthwise_symmetric_padding_by_hand():
  """All-ones 4x4 input and 3x3 kernel, stride 2: PyTorch-style padding 1 on every side gives
  window sums 4, 6 / 6, 9; TF 'SAME' pads (0, 1) and gives 9, 6 / 6, 4. Both implementations."""
  x = jnp.ones((1, 4, 4, 2))
  expected = {'symmetric': [[4, 6], [6, 9]], 'same': [[9, 6], [6, 4]]}
  for padding, want in expected.items():
    for impl in ('shifted', 'grouped'):
      layer = layers.DepthwiseConv(
        3, 2, impl=impl, padding=padding, kernel_init=nn.initializers.ones
      )
      y, _ = layer.init_with_output(jax.random.key(0), x)
      np.testing.assert_allclose(y[0, :, :, 0], want, err_msg=f'{padding} {impl}')


def test_portable_ops_give_the_same_model_outputs():
  """Export traces standard convolutions (layers.portable_ops); the maths must not change."""
  from fkd.models import MobileNetV2, layers

  model = MobileNetV2(num_outputs=6, width=0.35, depth=0.34)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  fast, _ = model.apply(variables, x, train=False)
  with layers.portable_ops():
    jaxpr = str(jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables))
    portable, _ = model.apply(variables, x, train=False)
  # Grouped depthwise convolutions; the only matrix product left is the Dense head.
  groups = [int(g) for g in re.findall(r'feature_group_count=(\d+)', jaxpr)]
  assert max(groups) > 1 and jaxpr.count('dot_general[') == 1, (groups, jaxpr.count('dot_general['))
  np.testing.assert_allclose(portable, fast, rtol=1e-5, atol=1e-5)
  assert layers.resolve_depthwise_impl('auto') == (
    _cpu_impl() if jax.default_backend() == 'cpu' else 'grouped'
  )


@pytest.mark.parametrize(
  'size, stride, k, padding',
  [
    (8, 2, 3, 'same'),
    (7, 2, 3, 'same'),
    (8, 2, 3, 'symmetric'),
    (9, 2, 5, 'symmetric'),
    (8, 2, 4, 'same'),
    (10, 3, 3, 'same'),
    (11, 3, 5, 'symmetric'),
  ],
)
def test_depthwise_input_grad_polyphase(size, stride, k, padding):
  """Phase-by-phase input gradient = autodiff of the strided shifted forward (float64)."""
  rng = np.random.default_rng(size + 10 * stride + 100 * k)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, 5)))
    kernel = jnp.asarray(rng.normal(size=(k, k, 1, 5)))
    pads = tuple(tuple(p) for p in layers.conv_padding(padding, x.shape[1:3], k, stride))
    y, vjp = jax.vjp(lambda v: layers.depthwise_conv_shifted_autodiff(v, kernel, stride, pads), x)
    g = jnp.asarray(rng.normal(size=y.shape))
    expected = vjp(g)[0]
    got = layers.depthwise_input_grad_polyphase(g, kernel, stride, pads, x.shape[1:3])
  np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
