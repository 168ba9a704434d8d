"""fkd.tools.import_weights on files written here (no Keras or torch needed): layouts, transposes,
meta, the command line and its errors. Parity with the real Keras / torchvision models is in
reference_parity_test.py (marked `reference`)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from fkd import models
from fkd.errors import FkdError
from fkd.infra import checkpoint
from fkd.tools import import_weights as iw

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fkd_variables(name: str, num_classes: int | None, **kwargs) -> dict:
  model = models.get_model(name, num_outputs=num_classes, **kwargs)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def _write_keras_h5(
  path: str, arch: str, variables: dict, width: float = 1.0, norm: tuple | None = None
) -> None:
  """A Keras 3 `.weights.h5`: `layers/<class key>[_n]/vars/<i>`, n counted per class in model
  order (as keras.saving writes it), Keras layouts (depthwise kernels (k, k, C, 1))."""
  p, s = variables['params'], variables['batch_stats']
  counts = {}
  with h5py.File(path, 'w') as h5:
    for cls, name in iw.keras_layers(arch, width):
      n = counts.get(cls, 0)
      counts[cls] = n + 1
      key = iw._snake(cls) + (f'_{n}' if n else '')
      if cls == 'Normalization':
        arrays = [
          np.asarray(norm[0], np.float32),
          np.asarray(norm[1], np.float32),
          np.asarray(100, np.int64),
        ]
      else:
        module = iw.keras_to_fkd(arch, name)
        if module == ('head',) and 'head' not in p:
          continue
        pm = functools.reduce(lambda d, k: d[k], module, p)
        if cls == 'BatchNormalization':
          sm = functools.reduce(lambda d, k: d[k], module, s)
          arrays = [pm['scale'], pm['bias'], sm['mean'], sm['var']]
        elif cls == 'DepthwiseConv2D':
          arrays = [pm['kernel'].transpose(0, 1, 3, 2)]
        else:
          arrays = [pm['kernel']] + ([pm['bias']] if 'bias' in pm else [])
      for i, a in enumerate(arrays):
        h5.create_dataset(f'layers/{key}/vars/{i}', data=a)
    h5.create_group('vars')


def _assert_tree_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_keras_mobilenet_v2_cli(tmp_path):
  variables = _fkd_variables('mobilenet_v2', 10, width=0.35)
  src = str(tmp_path / 'mnv2.weights.h5')
  _write_keras_h5(src, 'mobilenet_v2', variables, width=0.35)
  dst = str(tmp_path / 'ckpt')

  def convert() -> subprocess.CompletedProcess:
    command = ['fkd.tools.import_weights', '--from=keras', '--arch=mobilenet_v2', '--width=0.35']
    return subprocess.run(
      [sys.executable, '-m', *command, src, dst], cwd=REPO, capture_output=True, text=True
    )

  out = convert()
  assert out.returncode == 0, out.stderr
  assert 'mobilenet_v2' in out.stdout and '10 classes' in out.stdout
  loaded, meta = checkpoint.load_model(dst)
  _assert_tree_equal(loaded, variables)
  assert meta['model'] == 'mobilenet_v2' and meta['num_classes'] == 10
  assert meta['model_kwargs'] == {
    'width': 0.35,
    'bn_epsilon': 1e-3,
    'input_mean': [0.5] * 3,
    'input_std': [0.5] * 3,
  }
  # A second conversion into the same directory is refused.
  again = convert()
  assert again.returncode == 2 and 'not empty' in again.stderr


def test_keras_wrong_width_names_the_layer(tmp_path):
  variables = _fkd_variables('mobilenet_v2', None, width=0.35)
  src = str(tmp_path / 'mnv2.weights.h5')
  _write_keras_h5(src, 'mobilenet_v2', variables, width=0.35)
  with pytest.raises(
    FkdError,
    match=r"Keras layer 'Conv1' \(conv2d\) has shape \(3, 3, 3, 16\)"
    r'.*stem_conv/kernel expects \(3, 3, 3, 32\)',
  ):
    iw.convert_keras('mobilenet_v2', src, width=1.0)


def test_keras_efficientnet_b0_without_top_and_normalisation(tmp_path):
  variables = _fkd_variables('efficientnet_b0', None)
  src = str(tmp_path / 'b0.weights.h5')
  # Keras' ImageNet file stores variance = stddev (its bug), and its weights='imagenet' models
  # rescale by 1/sqrt(stddev) once more: the effective std is stddev itself.
  mean, stddev = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  _write_keras_h5(src, 'efficientnet_b0', variables, norm=(mean, stddev))
  got, meta = iw.convert_keras('efficientnet_b0', src)
  _assert_tree_equal(got, variables)
  assert meta['num_classes'] is None
  np.testing.assert_allclose(meta['model_kwargs']['input_mean'], mean, rtol=1e-6)
  np.testing.assert_allclose(meta['model_kwargs']['input_std'], stddev, rtol=1e-6)
  # An identity Normalization (a weights=None model): no extra rescaling.
  _write_keras_h5(src, 'efficientnet_b0', variables, norm=((0, 0, 0), (1, 1, 1)))
  _, meta = iw.convert_keras('efficientnet_b0', src)
  assert meta['model_kwargs']['input_mean'] == (0.0, 0.0, 0.0)
  assert meta['model_kwargs']['input_std'] == (1.0, 1.0, 1.0)


def _torchvision_resnet50_state(rng: np.random.Generator) -> dict[str, np.ndarray]:
  """torchvision resnet50().state_dict() names and shapes, written from its definition."""
  state = {}

  def conv(key, cout, cin, k):
    state[f'{key}.weight'] = rng.normal(size=(cout, cin, k, k)).astype(np.float32)

  def bn(key, c):
    for leaf in ('weight', 'bias', 'running_mean', 'running_var'):
      state[f'{key}.{leaf}'] = rng.normal(size=(c,)).astype(np.float32)
    state[f'{key}.num_batches_tracked'] = np.array(7, np.int64)

  conv('conv1', 64, 3, 7)
  bn('bn1', 64)
  cin = 64
  for i, n in enumerate((3, 4, 6, 3), start=1):
    w = 64 * 2 ** (i - 1)
    for j in range(n):
      p = f'layer{i}.{j}'
      conv(f'{p}.conv1', w, cin, 1)
      bn(f'{p}.bn1', w)
      conv(f'{p}.conv2', w, w, 3)
      bn(f'{p}.bn2', w)
      conv(f'{p}.conv3', 4 * w, w, 1)
      bn(f'{p}.bn3', 4 * w)
      if j == 0:
        conv(f'{p}.downsample.0', 4 * w, cin, 1)
        bn(f'{p}.downsample.1', 4 * w)
      cin = 4 * w
  state['fc.weight'] = rng.normal(size=(1000, 2048)).astype(np.float32)
  state['fc.bias'] = rng.normal(size=(1000,)).astype(np.float32)
  return state


def test_torch_resnet50_safetensors(tmp_path):
  state = _torchvision_resnet50_state(np.random.default_rng(0))
  src = str(tmp_path / 'r50.safetensors')
  save_file({f'module.{k}': v for k, v in state.items()}, src)  # DataParallel prefix too
  got, meta = iw.convert_torch('resnet50', src)
  p, s = got['params'], got['batch_stats']
  np.testing.assert_array_equal(p['conv1']['kernel'], state['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
    p['layer2_0']['conv2']['kernel'], state['layer2.0.conv2.weight'].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
    p['layer3_0']['downsample_conv']['kernel'][0, 0],
    state['layer3.0.downsample.0.weight'][:, :, 0, 0].T,
  )
  np.testing.assert_array_equal(s['layer4_2']['bn3']['var'], state['layer4.2.bn3.running_var'])
  np.testing.assert_array_equal(p['layer4_2']['bn3']['scale'], state['layer4.2.bn3.weight'])
  np.testing.assert_array_equal(p['head']['kernel'], state['fc.weight'].T)
  assert models.count_params(p) == 25_557_032
  assert meta['num_classes'] == 1000
  assert meta['model_kwargs'] == {
    'bn_epsilon': 1e-5,
    'input_mean': models.IMAGENET_MEAN,
    'input_std': models.IMAGENET_STD,
  }


def test_torch_errors(tmp_path):
  state = _torchvision_resnet50_state(np.random.default_rng(1))
  state['layer1.0.conv2.weight'] = state['layer1.0.conv2.weight'][:32]
  src = str(tmp_path / 'bad.safetensors')
  save_file(state, src)
  with pytest.raises(
    FkdError,
    match=r"'layer1.0.conv2.weight' has shape \(3, 3, 64, 32\), fkd "
    r'params/layer1_0/conv2/kernel expects \(3, 3, 64, 64\)',
  ):
    iw.convert_torch('resnet50', src)
  save_file({'features.0.weight': np.zeros((2, 2), np.float32)}, src)
  with pytest.raises(FkdError, match='not part of a torchvision ResNet'):
    iw.convert_torch('resnet50', src)
  with pytest.raises(FkdError, match='supports resnet50 and mobilenet_v2'):
    iw.convert_torch('efficientnet_b0', src)


@pytest.mark.parametrize('who, arch', [('teacher', 'efficientnet_b3'), ('student', 'mobilenet_v2')])
def test_converted_checkpoint_loads_into_the_paper_configs(tmp_path, who, arch):
  """The paper configs' teacher (EfficientNet-B3) and student (MobileNetV2 1.0) take a converted
  Keras checkpoint through `init_from` (training from it: pretrained_test.py)."""
  from configs import kd as kd_config
  from fkd import methods
  from fkd.training import init_from as pretrained
  from fkd.training import trainer as train

  variables = _fkd_variables(arch, 1000)
  src = str(tmp_path / f'{arch}.weights.h5')
  _write_keras_h5(src, arch, variables, norm=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
  iw.import_weights('keras', arch, src, str(tmp_path / 'ckpt'))
  config = kd_config.get_config('300w')
  config[who].init_from = str(tmp_path / 'ckpt')
  stage = pretrained.resolve_stage(
    methods.get(config).stage('teacher_tough' if who == 'teacher' else 'student_kd', config)
  )
  assert stage.model_config.name == arch
  np.testing.assert_allclose(
    stage.model_config.kwargs['input_std'],
    ((0.5, 0.5, 0.5) if arch == 'mobilenet_v2' else (0.229, 0.224, 0.225)),
    rtol=1e-6,
  )
  model = train.build_model(stage, 68)
  optimizer = train.make_optimizer(stage.train_config)
  state = jax.eval_shape(lambda: train.init_state(model, optimizer, 32, 0))
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)
  state = pretrained.load_into(state, stage, optimizer)
  for collection in ('params', 'batch_stats'):
    jax.tree.map(
      np.testing.assert_array_equal,
      {k: v for k, v in state[collection].items() if k != 'head'},
      {k: v for k, v in variables[collection].items() if k != 'head'},
    )
  assert state['params']['head']['kernel'].shape[-1] == 136


def test_torch_mobilenet_v2_flat_layout(tmp_path):
  """The pytorch-mobilenet-v2 layout (MobileFAN's `mobilenet_v2_imagenet.pth.tar`): flat
  `features.{i}.conv.{j}` Sequentials with ReLU6 slots, `classifier.weight`."""
  rng = np.random.default_rng(0)
  state = {}

  def conv(key, cout, cin_per_group, k):
    state[f'{key}.weight'] = rng.normal(size=(cout, cin_per_group, k, k)).astype(np.float32)

  def bn(key, c):
    for leaf in ('weight', 'bias', 'running_mean', 'running_var'):
      state[f'{key}.{leaf}'] = rng.normal(size=(c,)).astype(np.float32)

  conv('features.0.0', 32, 3, 3)
  bn('features.0.1', 32)
  cin, i = 32, 1
  for t, c, n, _ in (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
  ):
    for _ in range(n):
      p, hidden = f'features.{i}.conv', cin * t
      if t == 1:
        conv(f'{p}.0', hidden, 1, 3), bn(f'{p}.1', hidden), conv(f'{p}.3', c, hidden, 1)
        bn(f'{p}.4', c)
      else:
        conv(f'{p}.0', hidden, cin, 1), bn(f'{p}.1', hidden), conv(f'{p}.3', hidden, 1, 3)
        bn(f'{p}.4', hidden), conv(f'{p}.6', c, hidden, 1), bn(f'{p}.7', c)
      cin, i = c, i + 1
  conv('features.18.0', 1280, 320, 1)
  bn('features.18.1', 1280)
  state['classifier.weight'] = rng.normal(size=(1000, 1280)).astype(np.float32)
  state['classifier.bias'] = rng.normal(size=(1000,)).astype(np.float32)
  src = str(tmp_path / 'mnv2.safetensors')
  save_file(state, src)
  got, meta = iw.convert_torch('mobilenet_v2', src)
  p, s = got['params'], got['batch_stats']
  assert models.count_params(p) == 3_504_872
  np.testing.assert_array_equal(
    p['block_0']['depthwise']['kernel'], state['features.1.conv.0.weight'].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
    p['block_5']['expand']['kernel'][0, 0], state['features.6.conv.0.weight'][:, :, 0, 0].T
  )
  np.testing.assert_array_equal(
    p['block_5']['depthwise']['kernel'][:, :, 0, 7], state['features.6.conv.3.weight'][7, 0]
  )
  np.testing.assert_array_equal(
    s['block_16']['project_bn']['var'], state['features.17.conv.7.running_var']
  )
  np.testing.assert_array_equal(p['last_bn']['scale'], state['features.18.1.weight'])
  np.testing.assert_array_equal(p['head']['kernel'], state['classifier.weight'].T)
  assert meta['model_kwargs'] == {
    'width': 1.0,
    'padding': 'symmetric',
    'bn_epsilon': 1e-5,
    'input_mean': models.IMAGENET_MEAN,
    'input_std': models.IMAGENET_STD,
  }
