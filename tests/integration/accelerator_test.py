"""The accelerator programs, built and checked on a CPU (`fkd.tools.programs`,
`fkd.models.layers.target_platform`): they lower for TPU and GPU with no custom call, and the
accelerator formulation on an 8-device mesh computes the one-device step."""

from __future__ import annotations

import os
import textwrap

import helpers
import numpy as np
import pytest

from fkd import config_lib
from fkd.models import layers, native
from fkd.tools import programs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def tiny_programs():
  out = {}
  for name in ('kd', 'mobilefan', 'efficientfan'):
    config = config_lib.load(os.path.join(REPO, 'configs', f'{name}.py'), 'tiny')
    # The distilled students: their steps hold the teachers' frozen forward passes too.
    out[name] = [p for p in programs.build(config, eval_batch=4) if p.kind in ('train', 'predict')]
  return out


@pytest.mark.parametrize('platform', ['tpu', 'cuda'])
@pytest.mark.parametrize('method', ['kd', 'mobilefan', 'efficientfan'])
def test_programs_lower_without_custom_calls(tiny_programs, method, platform):
  names = []
  for program in tiny_programs[method]:
    text = programs.lower(program, platform).as_text()
    assert 'stablehlo.convolution' in text or 'stablehlo.dot_general' in text
    assert programs.custom_calls(text) == {}, program.name
    names.append(program.name)
  assert any(n.endswith('/train') for n in names) and any(n.endswith('/predict') for n in names)


def test_custom_call_counter_sees_the_cpu_kernels(tiny_programs):
  """Without the target platform a CPU process traces the native kernels (the bug this guards)."""
  if not native.available():
    pytest.skip(f'native kernels unavailable: {native.status["error"]}')
  step = next(p for p in tiny_programs['kd'] if p.name == 'student_kd/train')
  # After the TPU / GPU lowerings of the tests above: the local trace is not their cached one.
  text = programs.trace(step).lower(lowering_platforms=('cpu',)).as_text()
  calls = programs.custom_calls(text)
  assert calls.get('fkd_batch_sums', 0) > 0 and calls.get('fkd_depthwise_forward', 0) > 0
  assert programs.custom_calls('%0 = stablehlo.custom_call @Sharding(%arg0)') == {}
  assert programs.custom_calls('%0 = stablehlo.custom_call @foo(%a) %1 = "x"') == {'foo': 1}


def test_target_platform_resolves_auto():
  with layers.target_platform('tpu'):
    assert layers.resolve_depthwise_impl('auto') == 'grouped'
    assert layers.current_platform() == 'tpu'
  with layers.target_platform('cpu'):
    assert layers.resolve_depthwise_impl('auto') in ('native', 'shifted')
  with pytest.raises(ValueError, match='platform'):
    with layers.target_platform('abacus'):
      pass


MESH_SCRIPT = textwrap.dedent(
  """
  import json, sys
  import jax, numpy as np
  from fkd import config_lib
  from fkd.infra import sharding
  from fkd.tools import programs

  config = config_lib.load(sys.argv[1], 'tiny')
  step = next(p for p in programs.build(config, train_batch=8) if p.name == 'student_kd/train')
  rng = np.random.default_rng(0)

  def value(s):
    if s.dtype == np.uint8:
      return rng.integers(0, 256, s.shape).astype(np.uint8)
    if np.issubdtype(s.dtype, np.floating):
      return rng.uniform(0.0, 0.1, s.shape).astype(s.dtype)
    return np.zeros(s.shape, s.dtype)

  state, batch, key, teachers = jax.tree.map(value, step.args)
  batch['landmarks'] = rng.uniform(0, config.data.image_size, batch['landmarks'].shape)
  batch['landmarks'] = batch['landmarks'].astype(np.float32)
  out = {}
  with programs.layers.target_platform('tpu'):
    fn = jax.jit(lambda *a: step.fn(*a))
    _, one = fn(state, batch, key, teachers)
    mesh = sharding.make_mesh()
    r = lambda t: sharding.replicate(t, mesh)
    _, many = fn(r(state), sharding.shard_batch(batch, mesh), r(key), r(teachers))
  print(json.dumps({'devices': jax.device_count(),
                    'one': {k: float(v) for k, v in one.items()},
                    'many': {k: float(v) for k, v in many.items()}}))
  """
)


@pytest.mark.slow  # a subprocess run of minutes; `pytest -m slow` (CI) runs it
def test_accelerator_formulation_on_8_devices_matches_one():
  result = helpers.run_on_cpu_devices(MESH_SCRIPT, os.path.join(REPO, 'configs', 'kd.py'))
  assert result['devices'] == 8
  one, many = result['one'], result['many']
  assert one['loss'] > 0 and np.isfinite(one['loss'])
  for key in ('loss', 'grad_norm'):
    np.testing.assert_allclose(many[key], one[key], rtol=1e-5, err_msg=key)


@pytest.mark.parametrize('fill', ['zeros', 'reflect', 'context'])
@pytest.mark.parametrize('platform', ['tpu', 'cuda'])
def test_device_augmentation_lowers_without_custom_calls(platform, fill):
  """The KD augmentation with box jitter and ASM soft landmarks, as the trainer runs it, with
  each config.data.augment_fill."""
  config = config_lib.load(os.path.join(REPO, 'configs', 'kd.py'), 'tiny')
  config.data.augment = 'kd'
  config.data.box_noise = (0.06, 0.05, 0.1, 0.1)
  config.data.augment_fill = fill
  built = programs.build(config, train_batch=4)
  augment = [p for p in built if p.kind == 'augment']
  assert [p.name for p in augment] == ['augment'] and augment[0].images == 4
  text = programs.lower(augment[0], platform).as_text()
  assert programs.custom_calls(text) == {}
  assert 'stablehlo.gather' in text and 'stablehlo.dot_general' in text  # warp; ASM operator
  config.data.augment_on = 'host'
  assert not [p for p in programs.build(config, train_batch=4) if p.kind == 'augment']
