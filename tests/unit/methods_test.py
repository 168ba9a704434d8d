"""The methods contract, over every method of the registry: stages build, one jitted step of each
gives finite loss terms, heads round-trip through the checkpoint meta."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fkd import config_lib, heads, methods
from fkd.errors import FkdError
from fkd.training import trainer as train

# One config per method (a new method adds its line here and its file in configs/).
CONFIGS = {
  'kd': 'configs/kd.py',
  'fan': 'configs/mobilefan.py',
  'output_kd': 'configs/output_kd.py',
}


def test_every_method_has_a_config():
  assert set(CONFIGS) == set(methods.REGISTRY)
  for name, path in CONFIGS.items():
    config = config_lib.load(path, 'tiny')
    assert config.method == name
    assert methods.get(config) is methods.REGISTRY[name]


def _batch(size: int, n: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  points = rng.uniform(0.2 * size, 0.8 * size, (4, n, 2)).astype(np.float32)
  return {
    'image': rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8),
    'landmarks': points,
    'soft_landmarks': points + 0.5,
  }


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_every_stage_trains_one_step(name):
  config = config_lib.load(CONFIGS[name], 'tiny')
  method = methods.get(config)
  method.validate(config)
  n, size = config.data.num_landmarks, config.data.image_size
  batch = _batch(size, n)
  built = {}
  for stage_name in method.stages:  # teachers come first in every method's order
    stage = method.stage(stage_name, config)
    assert stage.role in ('teacher', 'student') and stage.head.image_size == size
    frozen = {
      t: methods.Frozen(built[t][0], method.stage(t, config).head, {}) for t in stage.teachers
    }
    teacher_vars = {t: built[t][1] for t in stage.teachers}
    model = train.build_model(stage, n, **method.model_kwargs(stage, config, frozen))
    optimizer = train.make_optimizer(stage.train_config, 10)
    apply_kwargs = method.train_apply_kwargs(stage, config)
    state = train.init_state(model, optimizer, size, method.seed_offset(stage_name), apply_kwargs)
    step = jax.jit(
      train.make_train_step(
        model, optimizer, stage, method.loss_fn(stage, config), frozen, apply_kwargs
      )
    )
    new_state, metrics = step(state, batch, jax.random.key_data(jax.random.key(0)), teacher_vars)
    values = jax.device_get(metrics)
    assert all(np.isfinite(v) for v in values.values()), (stage_name, values)
    assert int(new_state['step']) == 1
    terms = {k for k in values if k.startswith('loss/')}
    if stage.teachers:  # a distilling stage logs a term that involves its teachers
      assert terms, (stage_name, values)
    built[stage_name] = (
      model,
      {'params': new_state['params'], 'batch_stats': new_state['batch_stats']},
    )
    # The inference output decodes to (B, N, 2) crop pixels.
    outputs, _ = model.apply(
      built[stage_name][1], jnp.asarray(batch['image'], jnp.float32) / 255, train=False
    )
    chex.assert_shape(stage.head.decode(outputs), (4, n, 2))


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_heads_round_trip_through_the_meta(name):
  config = config_lib.load(CONFIGS[name], 'tiny')
  method = methods.get(config)
  for stage_name in method.stages:
    head = method.stage(stage_name, config).head
    assert heads.from_meta({'head': head.meta()}) == head


def test_heads_of_checkpoints_written_before_heads():
  old_kd = {'image_size': 32, 'target_space': 'normalized', 'num_landmarks': 68}
  assert heads.from_meta(old_kd) == heads.RegressionHead(32, 'normalized')
  old_cofw = {'image_size': 224, 'target_space': 'pixel'}
  assert heads.from_meta(old_cofw) == heads.RegressionHead(224, 'pixel')
  old_fan = {'image_size': 64, 'output': 'heatmaps', 'target_space': 'pixel', 'sigma': 2.0}
  assert heads.from_meta(old_fan) == heads.HeatmapHead(64, 2.0, 'reference')


def test_regression_head_hand_values():
  head = heads.RegressionHead(100, 'normalized')
  points = jnp.array([[[50.0, 0.0], [0.0, 100.0]]])  # u = (S/2 − x)/S
  np.testing.assert_allclose(head.targets(points), [[0.0, 0.5, 0.5, -0.5]])
  np.testing.assert_allclose(head.decode(head.targets(points)), points)
  pixel = heads.RegressionHead(100, 'pixel')
  np.testing.assert_allclose(pixel.targets(points), [[50.0, 0.0, 0.0, 100.0]])


def test_heatmap_head_decodes_its_targets():
  head = heads.HeatmapHead(64, 1.0, 'quadratic')
  points = jnp.array([[[10.3, 20.7], [40.1, 33.9]]])
  outputs = jnp.zeros((1, 16, 16, 2))  # stride 4
  target = head.targets(points, outputs)
  chex.assert_shape(target, (1, 16, 16, 2))
  np.testing.assert_allclose(head.decode(target), points, atol=4 * 0.05)
  assert dataclasses.replace(head, decode_method='reference') != head


def test_unknown_method_is_one_line():

  config = config_lib.load('configs/kd.py', 'tiny')
  config.method = 'fitnets'
  with pytest.raises(FkdError, match=r"config.method must be one of \['fan', 'kd', 'output_kd'\]"):
    methods.get(config)


@pytest.mark.parametrize('distance', ['mse', 'l1'])
def test_output_kd_loss_hand_values(distance):
  """(1 − α)·D(s, g) + α·D(s, t) in the head's target space, by hand on two coordinates."""
  config = config_lib.load('configs/output_kd.py', 'tiny')
  config.output_kd.alpha = 0.25
  config.output_kd.loss = distance
  method = methods.get(config)
  stage = method.stage('student_output_kd', config)
  n = config.data.num_landmarks
  gt_px = np.full((1, n, 2), config.data.image_size / 2, np.float32)
  gt = np.asarray(stage.head.targets(jnp.asarray(gt_px)))
  student = gt + 0.2  # every coordinate 0.2 from the ground truth ...
  teacher = gt - 0.1  # ... and 0.3 from the teacher
  loss, terms = method.loss_fn(stage, config)(
    jnp.asarray(student), {}, {'landmarks': jnp.asarray(gt_px)}, {'teacher_tough': (teacher,)}
  )
  d = (lambda e: e * e) if distance == 'mse' else abs
  np.testing.assert_allclose(terms['gt'], 0.75 * d(0.2), rtol=1e-5)
  np.testing.assert_allclose(terms['teacher'], 0.25 * d(0.3), rtol=1e-5)
  np.testing.assert_allclose(loss, 0.75 * d(0.2) + 0.25 * d(0.3), rtol=1e-5)
  config.output_kd.loss = 'huber'
  with pytest.raises(FkdError, match='config.output_kd.loss must be one of mse, l1'):
    method.validate(config)


def test_soft_targets_are_the_methods_choice():
  """Only KD-Loss (its Tolerant teacher, method.md §2.3) asks the pipeline for ASM soft targets,
  at its config's fraction; a KD-Loss config switched to output distillation (an ablation row)
  asks for none."""
  kd = config_lib.load('configs/kd.py', 'tiny')
  assert methods.get(kd).soft_targets(kd) == 0.9
  for path in ('configs/mobilefan.py', 'configs/output_kd.py'):
    config = config_lib.load(path, 'tiny')
    assert methods.get(config).soft_targets(config) is None
  assert methods.REGISTRY['output_kd'].soft_targets(kd) is None
