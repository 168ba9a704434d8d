"""Tests for fkd.models: Keras parameter counts, shapes, features, BN, dropout, impl equality."""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkd import models
from fkd.models import EfficientNet, MobileNetV2, count_params, get_model
from fkd.models.efficientnet import MBConv

# MobileNetV2: one block per group (ceil(0.25 n) = 1 for n <= 4). EfficientNet: repeats
# 1, 1, 1, 2, 2, 2, 1, so stages 4-6 have a residual block with drop-connect.
TINY_MOBILENET = dict(width=0.35, depth=0.25)
TINY_EFFICIENTNET = dict(width_coefficient=0.25, depth_coefficient=0.5)


def _shapes(model, res=32):
  """Variables as ShapeDtypeStructs: nothing is computed."""
  return jax.eval_shape(
    functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, res, res, 3))
  )


def _apply_shapes(model, res):
  variables = _shapes(model, res)
  return jax.eval_shape(
    functools.partial(model.apply, train=False), variables, jnp.zeros((1, res, res, 3))
  )


@pytest.mark.parametrize(
  'name, kwargs, collections, expected',
  [
    # Keras trainable parameters (`model.count_params()` minus non-trainable).
    ('mobilenet_v2', dict(num_outputs=1000), ('params',), 3_504_872),
    ('efficientnet_b0', dict(num_outputs=1000), ('params',), 5_288_548),
    ('efficientnet_b3', dict(num_outputs=1000), ('params',), 12_233_232),
    # Keras total (params + BN moving statistics), method.md §2.4.
    ('mobilenet_v2', dict(num_outputs=136), ('params', 'batch_stats'), 2_432_200),
    ('mobilenet_v2', dict(num_outputs=196), ('params', 'batch_stats'), 2_509_060),
    ('mobilenet_v2', dict(num_outputs=58), ('params', 'batch_stats'), 2_332_282),
    ('mobilenet_v2', dict(num_outputs=None), ('params', 'batch_stats'), 2_257_984),
  ],
)
def test_param_counts_equal_keras(name, kwargs, collections, expected):
  variables = _shapes(get_model(name, **kwargs))
  assert count_params({c: variables[c] for c in collections}) == expected


def test_efficientnet_b3_channels_and_repeats():
  model = get_model('efficientnet_b3', num_outputs=None)
  _, feats = _apply_shapes(model, 64)
  assert feats['stem'].shape[-1] == 40
  assert [feats[f'stage_{i}'].shape[-1] for i in range(1, 8)] == [24, 32, 48, 96, 136, 232, 384]
  assert feats['top'].shape == (1, 2, 2, 1536)
  blocks = [k for k in _shapes(model, 64)['params'] if k.startswith('block')]
  repeats = [sum(b.startswith(f'block{i}') for b in blocks) for i in range(1, 8)]
  assert repeats == [2, 3, 3, 5, 5, 6, 2]


def test_mobilenet_v2_full_feature_shapes():
  _, feats = _apply_shapes(MobileNetV2(num_outputs=136), 224)
  expected = {
    'stem': (112, 32),
    'stage_1': (112, 16),
    'stage_2': (56, 24),
    'stage_3': (28, 32),
    'stage_4': (14, 64),
    'stage_5': (14, 96),
    'stage_6': (7, 160),
    'stage_7': (7, 320),
    'last_conv': (7, 1280),
  }
  for name, (size, channels) in expected.items():
    assert feats[name].shape == (1, size, size, channels), name
  assert feats['pre_logits'].shape == (1, 1280)


@functools.partial(jax.jit, static_argnums=0)
def _train_apply(model, variables, x, rng):
  return model.apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': rng})


@functools.partial(jax.jit, static_argnums=0)
def _eval_apply(model, variables, x):
  return model.apply(variables, x, train=False)


def _random_variables(model, x, seed=0):
  """Random variables of the right shapes from numpy: jitted `init` compiles for ~10-20 s on CPU
  (threefry for every kernel), which the tests avoid; `init` itself is traced by `eval_shape`."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)

  def fill(path, s):
    name = path[-1].key
    if name == 'kernel':
      value = rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
    elif name in ('scale', 'var'):
      value = rng.uniform(0.5, 1.5, size=s.shape)
    else:  # bias, mean
      value = rng.normal(scale=0.1, size=s.shape)
    return jnp.asarray(value, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


X = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype(np.float32)
RNG0, RNG1 = jax.random.key(1), jax.random.key(2)
MNV2 = MobileNetV2(num_outputs=10, dropout=0.5, depthwise_impl='shifted', **TINY_MOBILENET)
EFFNET = EfficientNet(
  num_outputs=7, dropout=0.5, drop_connect_rate=0.5, depthwise_impl='shifted', **TINY_EFFICIENTNET
)


def _check_train_and_eval(model, num_outputs, feature_names):
  """Shapes, feature names, BN updates, dropout only in train mode; returns train outputs."""
  variables = _random_variables(model, X)
  (out, feats), updates = _train_apply(model, variables, X, RNG0)
  assert out.shape == (X.shape[0], num_outputs)
  assert set(feats) == set(feature_names)
  # BN running statistics move in training mode.
  old, new = variables['batch_stats'], updates['batch_stats']
  assert jax.tree.structure(old) == jax.tree.structure(new)
  assert all(
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new), strict=True)
  )
  # Dropout: random in train mode (needs the 'dropout' rng), deterministic in eval mode.
  (out1, feats1), _ = _train_apply(model, variables, X, RNG1)
  assert not np.allclose(out, out1)
  with pytest.raises(flax.errors.InvalidRngError, match='dropout'):
    jax.eval_shape(lambda v: model.apply(v, X, train=True, mutable=['batch_stats']), variables)
  out_eval, feats_eval = _eval_apply(model, variables, X)
  np.testing.assert_array_equal(out_eval, _eval_apply(model, variables, X)[0])
  assert out_eval.shape == out.shape and set(feats_eval) == set(feats)
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(out_eval))
  return variables, (out, feats, updates), feats1


def test_mobilenet_v2_tiny_train_eval():
  names = ['stem', *[f'stage_{i}' for i in range(1, 8)], 'last_conv', 'pre_logits']
  variables, (_, feats, _), feats1 = _check_train_and_eval(MNV2, 10, names)
  # Top dropout does not touch the features.
  np.testing.assert_array_equal(feats['pre_logits'], feats1['pre_logits'])
  strides = {
    'stem': 2,
    'stage_1': 2,
    'stage_2': 4,
    'stage_3': 8,
    'stage_4': 16,
    'stage_5': 16,
    'stage_6': 32,
    'stage_7': 32,
    'last_conv': 32,
  }
  for name, stride in strides.items():
    assert feats[name].shape[1:3] == (32 // stride,) * 2, name
  assert feats['stem'].shape[-1] == 16 and feats['stage_7'].shape[-1] == 112
  assert feats['last_conv'].shape[-1] == 1280 and feats['pre_logits'].shape == (4, 1280)
  # depth 0.25 keeps one block per group; Keras block ids otherwise.
  assert sorted(k for k in variables['params'] if k.startswith('block_')) == [
    f'block_{i}' for i in range(7)
  ]
  assert 'expand' not in variables['params']['block_0']


def test_efficientnet_tiny_train_eval():
  names = ['stem', *[f'stage_{i}' for i in range(1, 8)], 'top', 'pre_logits']
  _, (_, feats, _), feats1 = _check_train_and_eval(EFFNET, 7, names)
  # Drop-connect is active in train mode: the features change with the rng.
  assert not np.allclose(feats['pre_logits'], feats1['pre_logits'])
  assert [feats[f'stage_{i}'].shape[1] for i in range(1, 8)] == [16, 8, 4, 2, 2, 1, 1]
  out, feats = _apply_shapes(EfficientNet(include_top_conv=False, **TINY_EFFICIENTNET), 32)
  assert 'top' not in feats and out.shape == (1, 80)


def test_efficientnet_drop_connect_rates():
  model = get_model('efficientnet_b0', num_outputs=3)
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, MBConv) and context.method_name == '__call__':
      rates.append(context.module.drop_rate)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    variables = _shapes(model)
  blocks = [k for k in variables['params'] if k.startswith('block')]
  assert len(blocks) == 16 and blocks[0] == 'block1a' and blocks[-1] == 'block7a'
  np.testing.assert_allclose(rates, [0.2 * b / 16 for b in range(16)])


def test_mobilenet_v2_shifted_equals_grouped():
  """The same params, input and dropout rng through both depthwise implementations."""
  variables = _random_variables(MNV2, X)
  (a, fa), sa = _train_apply(MNV2, variables, X, RNG0)  # Cached from the train/eval test.
  (b, fb), sb = _train_apply(MNV2.clone(depthwise_impl='grouped'), variables, X, RNG0)
  for u, v in zip(jax.tree.leaves((a, fa, sa)), jax.tree.leaves((b, fb, sb)), strict=True):
    np.testing.assert_allclose(u, v, atol=1e-4, rtol=1e-3)


def test_get_model_registry():
  b3 = get_model('efficientnet_b3', num_outputs=136, dropout=0.5)
  assert (b3.width_coefficient, b3.depth_coefficient, b3.dropout) == (1.2, 1.4, 0.5)
  assert get_model('efficientnet_b7').dropout == 0.5
  assert get_model('efficientnet', width_coefficient=0.5).width_coefficient == 0.5
  assert isinstance(get_model('mobilenet_v2', num_outputs=3), MobileNetV2)
  assert set(models.model_names()) >= {'mobilenet_v2', 'efficientnet', 'efficientnet_b0'}
  with pytest.raises(ValueError):
    get_model('resnet18')
  small = get_model('efficientnet_b3', width_scale=0.5, depth_scale=0.5)
  _, feats = _apply_shapes(small, 32)
  assert feats['stem'].shape[-1] == 24  # make_divisible(32 * 1.2 * 0.5)


def test_bfloat16_compute():
  model = MobileNetV2(num_outputs=3, dtype=jnp.bfloat16, **TINY_MOBILENET)
  variables = _shapes(model)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  out, _ = jax.eval_shape(
    functools.partial(model.apply, train=False), variables, jnp.zeros((1, 32, 32, 3))
  )
  assert out.dtype == jnp.bfloat16
