"""MobileFAN / EfficientFAN students and the Simple Baselines teacher (method.md §5–6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkd import models
from fkd.models import heatmap_net


def _shapes(name, size=64, **kwargs):
  model = models.get_model(name, num_landmarks=5, **kwargs)
  # adapt=True: the adapters (training only since the methods redesign) are built and applied.
  variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False, adapt=True)
  out, features = model.apply(variables, jnp.zeros((2, size, size, 3)), train=False, adapt=True)
  return model, variables, out, features


def test_mobilefan_outputs_and_features():
  _, variables, out, features = _shapes(
    'mobilefan', backbone_kwargs=dict(width=0.35, depth=0.34), adapter_channels=(24, 24, 24)
  )
  assert out.shape == (2, 16, 16, 5)  # stride 4 heatmaps
  for i, side in zip((1, 2, 3), (4, 8, 16), strict=True):
    assert features[f'decoder_{i}'].shape == (2, side, side, 128)
    assert features[f'adapted_{i}'].shape == (2, side, side, 24)
    assert float(features[f'decoder_{i}'].min()) >= 0  # post-ReLU
  assert variables['params']['deconv_1']['kernel'].shape == (2, 2, 112, 128)  # k2, no bias
  assert 'bias' not in variables['params']['deconv_1']
  assert 'last_conv' not in variables['params']['backbone']  # no 1280 conv


def test_adapters_skipped_at_inference_and_shared_option():
  model, variables, _, _ = _shapes(
    'mobilefan',
    backbone_kwargs=dict(width=0.35, depth=0.34),
    adapter_channels=(8, 8, 8),
    share_adapter_23=True,
  )
  assert {'adapter_1', 'adapter_2'} <= set(variables['params'])
  assert 'adapter_3' not in variables['params']
  _, features = model.apply(variables, jnp.zeros((1, 64, 64, 3)), train=False, adapt=False)
  assert not any(k.startswith('adapted') for k in features)


@pytest.mark.parametrize('decoder', ['deconv_k4', 'upsample_conv', 'upsample_nearest_conv'])
def test_decoders_double_the_resolution(decoder):
  _, _, out, features = _shapes(
    'efficientfan',
    backbone_kwargs=dict(width_scale=0.25, depth_scale=0.25),
    decoder=decoder,
    decoder_channels=16,
  )
  assert out.shape == (2, 16, 16, 5)
  assert [features[f'decoder_{i}'].shape[1] for i in (1, 2, 3)] == [4, 8, 16]


def test_teacher_decoder_on_any_backbone():
  _, variables, out, features = _shapes(
    'simple_baselines',
    backbone='mobilenet_v2',
    backbone_kwargs=dict(width=0.35, depth=0.34),
    decoder_channels=32,
  )
  assert out.shape == (2, 16, 16, 5) and features['decoder_3'].shape == (2, 16, 16, 32)
  assert variables['params']['deconv_1']['kernel'].shape[:2] == (4, 4)


def test_input_normalisation_inside_the_model():
  model = models.get_model(
    'mobilefan', num_landmarks=2, backbone_kwargs=dict(width=0.35, depth=0.34)
  )
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  mean = jnp.broadcast_to(jnp.asarray(heatmap_net.IMAGENET_MEAN), (1, 32, 32, 3))
  enc = model.apply(variables, mean, train=False)[1]['encoder']
  raw = model.clone(normalize_input=False).apply(variables, jnp.zeros((1, 32, 32, 3)), train=False)[
    1
  ]['encoder']
  np.testing.assert_allclose(enc, raw, atol=1e-5)


@pytest.mark.parametrize(
  'name,landmarks,decoder,expected',
  [
    ('mobilefan', 29, None, (2.10e6, 2.13e6)),  # method.md §5.1: ≈2.11–2.12 M
    ('efficientfan', 68, None, (4.2e6, 4.35e6)),  # §6.2: ≈4.27 M
    ('efficientfan', 68, 'deconv_k4', (4.7e6, 4.9e6)),  # §6.2: ≈4.8 M
  ],
)
def test_paper_parameter_counts(name, landmarks, decoder, expected):
  kwargs = {'decoder': decoder} if decoder else {}
  model = models.get_model(name, num_landmarks=landmarks, **kwargs)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  )
  assert expected[0] <= models.count_params(shapes['params']) <= expected[1]


def test_simple_baselines_resnet50_parameter_count():
  if 'resnet50' not in models.model_names():
    pytest.skip('resnet50 is not registered in fkd.models')
  model = models.get_model('simple_baselines', num_landmarks=68)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  )
  assert 33.5e6 <= models.count_params(shapes['params']) <= 34.5e6  # method.md §5.3: ≈34.0 M


@pytest.mark.parametrize('k', [2, 4])
def test_deconv_phases_equal_conv_transpose(k):
  # The PyTorch deconvolutions (k2/p0, k4/p1) as Flax's nn.ConvTranspose computes them
  # (method.md §8), against the CPU phase form, in value and kernel gradient.
  import flax.linen as nn

  from fkd.models.heatmap_net import Deconv2x

  x = jnp.asarray(np.random.default_rng(k).normal(size=(2, 5, 4, 3)), jnp.float32)
  ref = nn.ConvTranspose(
    6,
    (k, k),
    strides=(2, 2),
    padding='VALID' if k == 2 else ((2, 2),) * 2,
    transpose_kernel=k == 4,
    use_bias=False,
    kernel_init=nn.initializers.normal(1.0),
  )
  variables = ref.init(jax.random.key(0), x)
  loss = lambda m: lambda v: jnp.sum(jnp.sin(m.apply(v, x)))
  for impl in ('phases', 'xla'):
    fast = Deconv2x(6, k, impl)
    np.testing.assert_allclose(fast.apply(variables, x), ref.apply(variables, x), atol=1e-5)
    np.testing.assert_allclose(
      jax.grad(loss(fast))(variables)['params']['kernel'],
      jax.grad(loss(ref))(variables)['params']['kernel'],
      atol=1e-4,
    )
  # 'auto' is resolved by layers.resolve_impl: the standard op inside portable_ops (export).
  from fkd.models import layers

  with layers.portable_ops():
    jaxpr = str(jax.make_jaxpr(lambda v: Deconv2x(6, k).apply(v, x))(variables))
  assert 'conv_general_dilated' in jaxpr and 'lhs_dilation=(2, 2)' in jaxpr, jaxpr[-500:]
  # PyTorch's rule out = 2·in − p + t, by hand for the k4 corner: output (0, 0) sees only
  # input (0, 0) through tap (1, 1).
  if k == 4:
    kernel = variables['params']['kernel']  # (k, k, Cout, Cin), PyTorch orientation
    np.testing.assert_allclose(
      ref.apply(variables, x)[0, 0, 0], kernel[1, 1] @ x[0, 0, 0], rtol=1e-5
    )
