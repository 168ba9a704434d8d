"""Method wiring, checked through `fkd.methods.REGISTRY[...].loss_fn` with hand-made teacher output.

Which teacher feeds which KD-Loss term, where λ comes from, which target trains which stage, which
features the heatmap distillation terms compare. Every expected value is computed by hand from
method.md §2.5.2 (released KD-Loss), §2.3 (the Tolerant teacher's soft targets), §5.4 / §6.4 (the
FAN terms) and output_kd's formula; no model is built, nothing is compiled.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from configs import kd as kd_config
from configs import mobilefan as mobilefan_config
from configs import output_kd as output_kd_config
from fkd import methods
from fkd.losses import affinity

# Two entries (one landmark, x and y) with ground truth 0, in pixel target space so the regression
# targets are the landmark coordinates themselves. p: student, a: Tough, s: Tolerant.
P = jnp.array([[1.0, 0.5]])
A = jnp.array([[0.5, 2.0]])
S = jnp.array([[2.0, 0.25]])
GT = jnp.zeros((1, 1, 2))
# method.md §2.5.2, released constants: α_tou 1.9, α⁻_tou −0.45, α_tol 1.8, α⁻_tol −0.4, β 0.15,
# slope 3, w_main 2, w_tou = w_tol = 1.
#   entry 1 (p=1):   Tough d=0.5 → R_P: 1.9·0.5 = 0.95;   Tolerant d=2 → R_N: −0.4·1 = −0.4
#   entry 2 (p=0.5): Tough d=2 → R_N: −0.45·1.5 = −0.675; Tolerant d=0.25 → R_P: 1.8·0.25 = 0.45
ALOSS_TOUGH = (0.95 - 0.675) / 2
ALOSS_TOLERANT = (-0.4 + 0.45) / 2
# λ = |s − g| = (2, 0.25): entry 1 linear 3·1 = 3; entry 2 quadratic 0.25 + 3·0.25 − 0.0625.
MAIN_TOLERANT_LAMBDA = 2.0 * (3.0 + 0.9375) / 2
# λ = |a − g| = (0.5, 2) instead: 1 + 1.5 − 0.25 = 2.25 and 3·0.5 = 1.5.
MAIN_TOUGH_LAMBDA = 2.0 * (2.25 + 1.5) / 2


def _kd_config(**kd):
  config = kd_config.get_config('tiny')
  config.data.target_space = 'pixel'
  for k, v in kd.items():
    config.kd[k] = v
  return config


def _kd_loss(config, teachers):
  method = methods.REGISTRY['kd']
  stage = method.stage('student_kd', config)
  batch = {'landmarks': GT, 'soft_landmarks': jnp.full_like(GT, 7.0)}  # soft: must not be used
  return method.loss_fn(stage, config)(P, {}, batch, teachers)


def test_kd_loss_terms_take_the_right_teacher_and_constants():
  teachers = {'teacher_tough': (A, {}), 'teacher_tolerant': (S, {})}
  total, terms = _kd_loss(_kd_config(), teachers)
  assert float(terms['aloss_tough']) == pytest.approx(ALOSS_TOUGH, abs=1e-6)
  assert float(terms['aloss_tolerant']) == pytest.approx(ALOSS_TOLERANT, abs=1e-6)
  assert float(terms['main']) == pytest.approx(MAIN_TOLERANT_LAMBDA, abs=1e-6)
  assert float(total) == pytest.approx(
    ALOSS_TOUGH + ALOSS_TOLERANT + MAIN_TOLERANT_LAMBDA, abs=1e-5
  )
  # The same numbers with the teachers crossed are different (the test can tell them apart).
  _, crossed = _kd_loss(_kd_config(), {'teacher_tough': (S, {}), 'teacher_tolerant': (A, {})})
  assert abs(float(crossed['aloss_tough']) - ALOSS_TOUGH) > 0.05
  assert abs(float(crossed['main']) - MAIN_TOLERANT_LAMBDA) > 0.05


def test_kd_lambda_sources():
  teachers = {'teacher_tough': (A, {}), 'teacher_tolerant': (S, {})}
  _, terms = _kd_loss(_kd_config(lambda_source='tough'), teachers)
  assert float(terms['main']) == pytest.approx(MAIN_TOUGH_LAMBDA, abs=1e-6)
  # λ = 0.75 everywhere: entry 1 quadratic 1 + 2.25 − 0.5625, entry 2 linear 1.5.
  _, terms = _kd_loss(_kd_config(lambda_source='constant', lambda_const=0.75), teachers)
  assert float(terms['main']) == pytest.approx(2.0 * (2.6875 + 1.5) / 2, abs=1e-6)


def test_kd_term_weights_come_from_their_own_constants():
  teachers = {'teacher_tough': (A, {}), 'teacher_tolerant': (S, {})}
  total, terms = _kd_loss(_kd_config(w_main=1.5, w_tou=0.5, w_tol=4.0), teachers)
  assert float(terms['aloss_tough']) == pytest.approx(0.5 * ALOSS_TOUGH, abs=1e-6)
  assert float(terms['aloss_tolerant']) == pytest.approx(4.0 * ALOSS_TOLERANT, abs=1e-6)
  assert float(terms['main']) == pytest.approx(0.75 * MAIN_TOLERANT_LAMBDA, abs=1e-6)
  assert float(total) == pytest.approx(sum(float(v) for v in terms.values()), abs=1e-6)


def test_kd_single_teacher_student():
  config = _kd_config(teachers=('teacher_tough',))
  stage = methods.REGISTRY['kd'].stage('student_kd', config)
  assert stage.teachers == ('teacher_tough',)
  _, terms = _kd_loss(config, {'teacher_tough': (A, {})})
  assert set(terms) == {'main', 'aloss_tough'}
  assert float(terms['aloss_tough']) == pytest.approx(ALOSS_TOUGH, abs=1e-6)
  assert float(terms['main']) == pytest.approx(MAIN_TOUGH_LAMBDA, abs=1e-6)  # λ from Tough
  config = _kd_config(teachers=('teacher_tolerant',))
  _, terms = _kd_loss(config, {'teacher_tolerant': (S, {})})
  assert set(terms) == {'main', 'aloss_tolerant'}
  assert float(terms['aloss_tolerant']) == pytest.approx(ALOSS_TOLERANT, abs=1e-6)


def test_kd_stages_roles_and_teachers():
  config = kd_config.get_config('tiny')
  # Tell the two model and optimizer configs apart (tiny may give them equal values).
  config.teacher.name, config.student.name = 'the_teacher', 'the_student'
  config.teacher_train.lr, config.train.lr = 0.125, 0.5
  method = methods.REGISTRY['kd']
  assert method.stages[:3] == ('teacher_tolerant', 'teacher_tough', 'student_kd')
  for name, role, model, train in [
    ('teacher_tolerant', 'teacher', config.teacher, config.teacher_train),
    ('teacher_tough', 'teacher', config.teacher, config.teacher_train),
    ('student_kd', 'student', config.student, config.train),
    ('student_baseline', 'student', config.student, config.train),
  ]:
    stage = method.stage(name, config)
    assert (stage.role, stage.model_config, stage.train_config) == (role, model, train), name
  assert set(method.stage('student_kd', config).teachers) == {'teacher_tough', 'teacher_tolerant'}
  assert method.stage('teacher_tough', config).teachers == ()


@pytest.mark.parametrize(
  'method_name, config_module',
  [('kd', kd_config), ('output_kd', output_kd_config)],
)
def test_supervised_stages_train_on_their_targets(method_name, config_module):
  # Ground truth at 0, soft landmarks at 1, prediction 2: MSE 4 / L1 2 against the ground truth,
  # MSE 1 / L1 1 against the soft landmarks (method.md §2.3: only the Tolerant teacher uses them).
  config = config_module.get_config('tiny')
  config.data.target_space = 'pixel'
  config.loss.teacher = 'mse'
  config.loss.baseline = 'l1'
  method = methods.REGISTRY[method_name]
  batch = {'landmarks': jnp.zeros((2, 3, 2)), 'soft_landmarks': jnp.ones((2, 3, 2))}
  outputs = jnp.full((2, 6), 2.0)
  expected = {'teacher_tolerant': 1.0, 'teacher_tough': 4.0, 'student_baseline': 2.0}
  for name, want in expected.items():
    if name not in method.stages:
      continue
    stage = method.stage(name, config)
    loss, _ = method.loss_fn(stage, config)(outputs, {}, batch, {})
    assert float(loss) == pytest.approx(want, abs=1e-6), name


def test_regression_targets_in_normalised_space():
  # u = (S/2 − x)/S (method.md §2.2): x = S/2 gives 0, x = 0 gives 1/2.
  config = kd_config.get_config('tiny')
  config.data.target_space = 'normalized'
  config.loss.teacher = 'mse'
  method = methods.REGISTRY['kd']
  size = config.data.image_size
  stage = method.stage('teacher_tough', config)
  batch = {'landmarks': jnp.array([[[size / 2, 0.0]]]), 'soft_landmarks': jnp.zeros((1, 1, 2))}
  loss, _ = method.loss_fn(stage, config)(jnp.zeros((1, 2)), {}, batch, {})
  assert float(loss) == pytest.approx((0.0 + 0.25) / 2, abs=1e-6)


def test_output_kd_uses_the_tough_teacher():
  config = output_kd_config.get_config('tiny')
  config.data.target_space = 'pixel'
  config.output_kd.alpha = 0.25
  method = methods.REGISTRY['output_kd']
  stage = method.stage('student_output_kd', config)
  assert stage.teachers == ('teacher_tough',)
  batch = {'landmarks': jnp.zeros((1, 1, 2)), 'soft_landmarks': jnp.full((1, 1, 2), 5.0)}
  teachers = {'teacher_tough': (jnp.array([[3.0, 3.0]]), {})}
  outputs = jnp.array([[1.0, 1.0]])
  loss, terms = method.loss_fn(stage, config)(outputs, {}, batch, teachers)
  # 0.75·MSE(1, 0) + 0.25·MSE(1, 3) = 0.75 + 1.
  assert float(terms['gt']) == pytest.approx(0.75, abs=1e-6)
  assert float(terms['teacher']) == pytest.approx(1.0, abs=1e-6)
  assert float(loss) == pytest.approx(1.75, abs=1e-6)


def _fan_features(rng, b, h, channels, prefix):
  return {
    f'{prefix}_{i}': jnp.asarray(rng.normal(size=(b, h, h, c)), jnp.float32)
    for i, c in zip((1, 2, 3), channels, strict=True)
  }


@pytest.mark.parametrize('lambdas', [(0.5, 0.25, 0.0), (0.5, 0.0, 0.125)])
def test_fan_terms_take_the_teacher_decoder_features(lambdas):
  config = mobilefan_config.get_config('tiny')
  fan = config.fan
  fan.lambda_fa, fan.lambda_fs, fan.lambda_ps = lambdas
  method = methods.REGISTRY['fan']
  stage = method.stage('student_distill', config)
  assert stage.teachers == ('teacher',)
  rng = np.random.default_rng(0)
  b, h, size = 2, 4, config.data.image_size
  # Student: decoder features (Cs) and their adapted version (teacher's Ct); teacher: its decoder
  # features plus decoys (its heatmaps, an unused encoder map) that no term may read.
  student = _fan_features(rng, b, h, (3, 3, 3), 'decoder') | _fan_features(
    rng, b, h, (5, 5, 5), 'adapted'
  )
  teacher = _fan_features(rng, b, h, (5, 5, 5), 'decoder')
  teacher['encoder'] = jnp.ones((b, h, h, 5))
  teacher_heatmaps = jnp.asarray(rng.normal(size=(b, h, h, 4)), jnp.float32)
  points = jnp.asarray(rng.uniform(0, size - 1, size=(b, 4, 2)), jnp.float32)
  batch = {'landmarks': points, 'soft_landmarks': points + 3.0}
  outputs = jnp.zeros((b, h, h, 4))
  loss, terms = method.loss_fn(stage, config)(
    outputs, student, batch, {'teacher': (teacher_heatmaps, teacher)}
  )
  layers = [f'_{i}' for i in fan.layers]
  want = {
    # L_FA: plain MSE between the adapted student and the teacher's decoder features (§5.4).
    'fa': sum(
      float(jnp.mean((student['adapted' + k] - teacher['decoder' + k]) ** 2)) for k in layers
    ),
  }
  if fan.lambda_fs:
    want['fs'] = sum(
      float(affinity.affinity_mse_naive(student['decoder' + k], teacher['decoder' + k]))
      for k in layers
    )
  if fan.lambda_ps:
    want['ps'] = sum(
      float(
        affinity.patch_similarity_mse(
          student['decoder' + k],
          teacher['decoder' + k],
          fan.ps_min_scale,
          fan.ps_pool,
          affinity=affinity.affinity_mse_naive,
        )
      )
      for k in layers
    )
  assert set(terms) == {'heatmap', *want}
  for k, v in want.items():
    assert float(terms[k]) == pytest.approx(v, rel=1e-4), k
  # outputs are zero: the heatmap term is the mean square of the targets, which are Gaussians of
  # peak 1 around the ground-truth landmarks (not the soft ones).
  targets = stage.head.targets(points, outputs)
  assert float(terms['heatmap']) == pytest.approx(float(jnp.mean(targets**2)), rel=1e-6)
  assert float(jnp.max(targets)) > 0.5
  weighted = (
    lambdas[0] * want['fa'] + lambdas[1] * want.get('fs', 0) + lambdas[2] * want.get('ps', 0)
  )
  assert float(loss) == pytest.approx(float(terms['heatmap']) + weighted, rel=1e-4)


def test_fan_baseline_has_no_distillation():
  config = mobilefan_config.get_config('tiny')
  method = methods.REGISTRY['fan']
  stage = method.stage('student_baseline', config)
  assert stage.teachers == ()
  points = jnp.full((1, 2, 2), 8.0)
  loss, terms = method.loss_fn(stage, config)(
    jnp.zeros((1, 4, 4, 2)), {}, {'landmarks': points}, {}
  )
  assert set(terms) == {'heatmap'}
  assert float(loss) == float(terms['heatmap'])
