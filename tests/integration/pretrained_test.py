"""`init_from`: a converted checkpoint starts the teacher and the student stages."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import kd as kd_config
from fkd import methods, models
from fkd.errors import FkdError
from fkd.infra import checkpoint
from fkd.training import init_from as pretrained
from fkd.training import trainer as train

NORM = {'input_mean': [0.4, 0.5, 0.6], 'input_std': [0.2, 0.25, 0.3]}


def _write_pretrained(path: str, seed: int, **kwargs) -> dict:
  """An imported-style checkpoint (1000-class head, recorded input normalisation)."""
  model = models.get_model('mobilenet_v2', num_outputs=1000, **kwargs)
  variables = jax.jit(functools.partial(model.init, train=False))(
    jax.random.key(seed), jnp.zeros((1, 32, 32, 3))
  )
  variables = jax.tree.map(np.asarray, variables)
  rng = np.random.default_rng(seed)  # non-trivial BN statistics
  variables['batch_stats'] = jax.tree.map(
    lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32), variables['batch_stats']
  )
  checkpoint.save_model(
    path,
    variables,
    {
      'stage': 'import_weights',
      'model': 'mobilenet_v2',
      'num_classes': 1000,
      'model_kwargs': {**kwargs, 'bn_epsilon': 1e-3, **NORM},
    },
  )
  return variables


def _no_head(tree: dict) -> dict:
  return {k: v for k, v in tree.items() if k != 'head'}


def _config(config, data_dir, stages):
  config.data.data_dir = data_dir
  config.stages = stages
  for tc in (config.train, config.teacher_train):
    tc.num_steps = 2
    tc.lr = 0.0  # Adam with a zero step size leaves the parameters as loaded
  return config


def test_teacher_and_student_start_from_init_from(tmp_path, data_dir, capsys):
  tiny = dict(width=0.35, depth=0.34)  # the runlocal networks
  loaded = _write_pretrained(str(tmp_path / 'imported'), seed=5, **tiny)
  workdir = str(tmp_path / 'run')

  # One run of both stages (the tough teacher and the plain-MSE student need nothing else).
  config = _config(
    kd_config.get_config('runlocal'), data_dir, ('teacher_tough', 'student_baseline')
  )
  config.teacher.init_from = config.student.init_from = str(tmp_path / 'imported')
  train.run(config, workdir)

  out = capsys.readouterr().out
  assert out.count(f'initialised from {tmp_path / "imported"}') == 2
  for stage in ('teacher_tough', 'student_baseline'):
    variables, meta = checkpoint.load_model(os.path.join(workdir, stage))
    # Everything but the 136-output head is the checkpoint's; the head is freshly initialised.
    jax.tree.map(
      np.testing.assert_array_equal, _no_head(variables['params']), _no_head(loaded['params'])
    )
    assert variables['params']['head']['kernel'].shape == (1280, 136)
    # BN statistics moved from the loaded values (momentum 0.9, 2 steps), not from 0 / 1.
    var = variables['batch_stats']['block_3']['depthwise_bn']['var']
    ref = loaded['batch_stats']['block_3']['depthwise_bn']['var']
    assert np.corrcoef(var, ref)[0, 1] > 0.5
    # The recorded input normalisation is part of the stage's model from then on.
    assert meta['model_kwargs']['input_mean'] == NORM['input_mean']
    assert meta['model_kwargs']['input_std'] == NORM['input_std']
    assert meta['model_kwargs']['width'] == 0.35


def test_shape_mismatch_names_the_parameter(tmp_path):
  _write_pretrained(str(tmp_path / 'wide'), seed=0, width=0.5, depth=0.34)
  config = kd_config.get_config('runlocal')
  config.teacher.init_from = str(tmp_path / 'wide')
  stage = pretrained.resolve_stage(methods.get(config).stage('teacher_tough', config))
  model = train.build_model(stage, 68)
  optimizer = train.make_optimizer(stage.train_config)
  state = train.init_state(model, optimizer, 32, 0)
  with pytest.raises(
    FkdError,
    match=r'config.teacher.init_from=.*wide: block_1/project/kernel '
    r'has shape \(1, 1, 48, 16\), the model expects \(1, 1, 48, 8\)',
  ):
    pretrained.load_into(state, stage, optimizer)


def test_validation_before_anything_is_written(tmp_path, data_dir):
  config = _config(kd_config.get_config('runlocal'), data_dir, ('teacher_tough',))
  config.teacher.init_from = str(tmp_path / 'absent')
  with pytest.raises(FkdError, match=r'config.teacher.init_from: no checkpoint at .*absent'):
    train.run(config, str(tmp_path / 'run'))
  _write_pretrained(str(tmp_path / 'mnv2'), seed=0, width=0.35, depth=0.34)
  config = _config(kd_config.get_config('300w,runlocal'), data_dir, ('student_baseline',))
  config.teacher.init_from = str(tmp_path / 'mnv2')
  with pytest.raises(
    FkdError,
    match=r"holds a 'mobilenet_v2' model, config.teacher.name is "
    r"'efficientnet_b3'",
  ):
    pretrained.check(config.teacher, 'teacher')
  assert not os.path.exists(tmp_path / 'run')


def test_merge_params():
  init = {'a': {'kernel': np.zeros((2, 3))}, 'head': {'kernel': np.zeros((3, 4))}}
  loaded = {'a': {'kernel': np.ones((2, 3))}, 'head': {'kernel': np.ones((3, 1000))}}
  merged = pretrained.merge_params(init, loaded)
  np.testing.assert_array_equal(merged['a']['kernel'], np.ones((2, 3)))
  np.testing.assert_array_equal(merged['head']['kernel'], np.zeros((3, 4)))
  with pytest.raises(FkdError, match='src: has no a/kernel'):
    pretrained.merge_params(init, {'head': loaded['head']}, source='src')
