"""ResNet-50 (torchvision v1.5 layout): sizes, features, padding and input normalisation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fkd import models
from fkd.models import ResNet, get_model
from fkd.models.layers import normalize_input


def _shapes(model, res):
  return jax.eval_shape(
    functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, res, res, 3))
  )


def test_resnet50_sizes_equal_torchvision():
  variables = _shapes(get_model('resnet50', num_outputs=1000), 224)
  # torchvision: sum(p.numel() for p in resnet50().parameters()) and the BN running statistics.
  assert models.count_params(variables['params']) == 25_557_032
  assert models.count_params(variables['batch_stats']) == 53_120
  p = variables['params']
  assert p['layer2_0']['conv2']['kernel'].shape == (3, 3, 128, 128)  # v1.5: stride on the 3x3
  assert p['layer2_0']['downsample_conv']['kernel'].shape == (1, 1, 256, 512)
  assert 'downsample_conv' not in p['layer2_1']
  assert sorted(k for k in p if k.startswith('layer4')) == ['layer4_0', 'layer4_1', 'layer4_2']


def test_tiny_resnet_train_and_features():
  model = ResNet(num_outputs=5, stage_sizes=(1, 1, 1, 1), width=4)
  x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  (out, feats), updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert out.shape == (2, 5) and np.all(np.isfinite(out))
  expected = {
    'stem': (32, 4),
    'stem_pool': (16, 4),
    'stage_1': (16, 16),
    'stage_2': (8, 32),
    'stage_3': (4, 64),
    'stage_4': (2, 128),
  }
  for name, (size, channels) in expected.items():
    assert feats[name].shape == (2, size, size, channels), name
  assert feats['pre_logits'].shape == (2, 128)
  moved = jax.tree.map(
    lambda a, b: bool(np.any(a != b)), updates['batch_stats'], variables['batch_stats']
  )
  assert all(jax.tree.leaves(moved))
  pooled, _ = ResNet(stage_sizes=(1, 1, 1, 1), width=4).apply(variables, x, train=False)
  assert pooled.shape == (2, 128)


def test_stem_padding_is_symmetric_like_pytorch():
  """conv1 (7x7, stride 2) on an all-ones 224² image with an all-ones kernel: PyTorch pads 3 on
  every side, so output (0, 0) sums a 4x4 window of 3 channels = 48 (TF 'SAME' would pad 2 top /
  3 bottom and give 5x5x3 = 75) and the last output (111, 111) sums rows 219..223 (5 of them,
  bottom pad 3): 5x5x3 = 75."""
  model = ResNet(num_outputs=None, stage_sizes=(1,), width=1)
  x = jnp.ones((1, 224, 224, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  variables = jax.tree.map(jnp.asarray, variables)
  params = dict(variables['params'])
  params['conv1'] = {'kernel': jnp.ones((7, 7, 3, 1))}
  stats = dict(variables['batch_stats'])
  stats['bn1'] = {'mean': jnp.zeros(1), 'var': jnp.ones(1) - 1e-5}  # BN = identity
  _, feats = model.apply({'params': params, 'batch_stats': stats}, x, train=False)
  stem = feats['stem'][0, :, :, 0]
  assert stem.shape == (112, 112)
  np.testing.assert_allclose([stem[0, 0], stem[111, 111], stem[50, 50]], [48, 75, 147], rtol=1e-6)


def test_normalize_input():
  x = jnp.full((1, 2, 2, 3), 0.5)
  y = normalize_input(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
  np.testing.assert_allclose(
    y[0, 0, 0], [(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225], rtol=1e-6
  )
  assert normalize_input(x, None, None) is x
  # A model with the kwargs (as JSON meta gives them, lists) normalises before the stem.
  model = get_model('resnet', stage_sizes=(1,), width=2, input_mean=[0.5] * 3, input_std=[0.25] * 3)
  assert model.input_mean == (0.5, 0.5, 0.5)
  variables = model.init(jax.random.key(0), x, train=False)
  _, feats = model.apply(variables, x, train=False)  # 0.5 -> 0, and BN(0) = β = 0 at init
  np.testing.assert_array_equal(feats['stem'], 0.0)
  _, feats = model.clone(input_mean=None, input_std=None).apply(variables, x, train=False)
  assert np.any(feats['stem'] != 0.0)
